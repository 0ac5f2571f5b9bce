//! palisade-cni: the CNI plugin that puts pods under palisade's policies.
//!
//! The runtime runs it with the `CNI_*` environment and the network
//! configuration on stdin ([`invocation`], [`config`]); [`run`] answers on
//! stdout in the configuration's `cniVersion`, with the spec's error codes.
//! [`commands`] holds what each command does.

pub mod commands;
pub mod config;
pub mod endpoint;
pub mod invocation;
pub mod ipam;
pub mod link;
pub mod netns;

use std::io::Read;

use rscni_types::{
    error::Error,
    legacy,
    types::{CNIResultWithVersion, Cmd, ErrorResult},
    version::{PluginInfo, SpecVersion},
};
use serde::Deserialize;

use crate::{commands::Context, config::PluginConfig, invocation::Invocation};

/// What the plugin prints and whether it succeeded (exit status 0 or 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Everything written to stdout.
    pub stdout: String,
    /// Whether the command succeeded.
    pub success: bool,
}

/// Only the version of a configuration, to answer errors in it.
#[derive(Deserialize)]
struct DeclaredVersion {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
}

/// Runs one invocation: `var` reads the environment, `input` is stdin.
pub fn run(var: impl Fn(&str) -> Option<String>, input: impl Read) -> Output {
    let bytes = invocation::read_config(input);
    // Errors are reported in the configuration's version when it has one
    // this plugin speaks, else in the newest.
    let reply_version = bytes
        .as_ref()
        .ok()
        .and_then(|bytes| serde_json::from_slice::<DeclaredVersion>(bytes).ok())
        .and_then(|declared| declared.cni_version)
        .and_then(|version| version.parse::<SpecVersion>().ok())
        .filter(|version| PluginInfo::default().validate(*version).is_ok())
        .unwrap_or(SpecVersion::CURRENT);
    let outcome = bytes.and_then(|bytes| dispatch(var, &bytes));
    match outcome {
        Ok(stdout) => Output {
            stdout,
            success: true,
        },
        Err(error) => Output {
            stdout: serde_json::to_string(&ErrorResult::new(reply_version, &error))
                .unwrap_or_default(),
            success: false,
        },
    }
}

fn dispatch(var: impl Fn(&str) -> Option<String>, bytes: &[u8]) -> Result<String, Error> {
    let invocation = Invocation::from_env(var)?;
    if invocation.command == Cmd::Version {
        return encode(&PluginInfo::default());
    }
    let config = PluginConfig::parse(bytes)?;
    config.net.validate_name()?;
    let version = PluginInfo::default().negotiate(&config.net, invocation.command)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|error| Error::IOFailure(format!("starting the async runtime: {error}")))?;
    let context = Context {
        invocation: &invocation,
        config: &config,
        raw_config: bytes,
    };
    runtime.block_on(async {
        match invocation.command {
            Cmd::Add => {
                let result = commands::add(&context).await?;
                if version.is_legacy() {
                    encode(&legacy::CNIResult::new(version, result))
                } else {
                    encode(&CNIResultWithVersion::new(version, result))
                }
            }
            Cmd::Del => commands::del(&context).await.map(|()| String::new()),
            Cmd::Check => commands::check(&context).await.map(|()| String::new()),
            Cmd::Status => commands::status(&context).await.map(|()| String::new()),
            Cmd::Gc => commands::gc(&context).await.map(|()| String::new()),
            Cmd::Version => encode(&PluginInfo::default()),
        }
    })
}

fn encode(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string(value)
        .map_err(|error| Error::IOFailure(format!("encoding the result: {error}")))
}
