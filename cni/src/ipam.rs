//! IPAM delegated to a standard plugin (host-local, say): run from
//! `CNI_PATH` with the same configuration on stdin, as the reference
//! plugins' `invoke.DelegateAdd` does.

use std::{path::PathBuf, process::Stdio, time::Duration};

use rscni_types::{
    error::Error,
    types::{CNIResult, ErrorResult},
    version::{PluginInfo, SpecVersion},
};
use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, process::Command};

use crate::invocation::Invocation;

/// Longest a delegated plugin may run.
const DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most output read from a delegated plugin.
const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// The plugin `name` in `CNI_PATH`.
///
/// # Errors
///
/// Code 7 when `name` is not a plain file name, 100+ when no directory of
/// `CNI_PATH` has it.
pub fn find(name: &str, invocation: &Invocation) -> Result<PathBuf, Error> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::InvalidNetworkConfig(format!(
            "ipam type {name:?} is not a plugin name"
        )));
    }
    invocation
        .path
        .iter()
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Error::Custom(
                101,
                "IPAM plugin not found".to_owned(),
                format!(
                    "failed to find plugin {name:?} in path {:?}",
                    invocation.path
                ),
            )
        })
}

/// Runs the IPAM plugin `name` for `command` with `config` on stdin; the
/// rest of the `CNI_*` environment is the invocation's.
///
/// A configuration of spec 1.1.0 goes to an IPAM plugin that only speaks
/// 1.0.0 (Debian 12's host-local, say) as 1.0.0: their ADD results have
/// the same layout. Such a plugin is not asked for STATUS or GC, which
/// 1.0.0 lacks.
///
/// # Errors
///
/// The plugin's own error when it fails; 5 when it cannot be run.
pub async fn delegate(
    name: &str,
    command: &str,
    invocation: &Invocation,
    config: &[u8],
) -> Result<Option<CNIResult>, Error> {
    let program = find(name, invocation)?;
    let Some(config) = spoken(&program, command, invocation, config).await? else {
        return Ok(None);
    };
    let output = exec(&program, command, invocation, &config).await?;
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_slice(&output).map(Some).map_err(|error| {
        Error::FailedToDecode(format!("the result of {}: {error}", program.display()))
    })
}

/// `config` as `program` understands it for `command`: unchanged unless it
/// is of spec 1.1.0 and the plugin stops at 1.0.0 (then relabelled, or
/// `None` for the commands 1.0.0 lacks).
async fn spoken(
    program: &std::path::Path,
    command: &str,
    invocation: &Invocation,
    config: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    let mut value: serde_json::Value = serde_json::from_slice(config)
        .map_err(|error| Error::FailedToDecode(format!("the network configuration: {error}")))?;
    if value.get("cniVersion").and_then(serde_json::Value::as_str) != Some("1.1.0") {
        return Ok(Some(config.to_vec()));
    }
    let info = exec(program, "VERSION", invocation, br#"{"cniVersion":"1.1.0"}"#).await?;
    let info: PluginInfo = serde_json::from_slice(&info).map_err(|error| {
        Error::FailedToDecode(format!("the VERSION of {}: {error}", program.display()))
    })?;
    let speaks = |version: SpecVersion| info.supported_versions().contains(&version);
    if speaks(SpecVersion::CURRENT) {
        return Ok(Some(config.to_vec()));
    }
    if !speaks(SpecVersion::new(1, 0, 0)) || matches!(command, "STATUS" | "GC") {
        return Ok(None);
    }
    value["cniVersion"] = serde_json::Value::from("1.0.0");
    serde_json::to_vec(&value)
        .map(Some)
        .map_err(|error| Error::IOFailure(format!("encoding the IPAM configuration: {error}")))
}

/// Runs `program` for `command` with `config` on stdin: its stdout, or its
/// error.
async fn exec(
    program: &std::path::Path,
    command: &str,
    invocation: &Invocation,
    config: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut child = Command::new(program)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &invocation.container_id)
        .env("CNI_NETNS", &invocation.netns)
        .env("CNI_IFNAME", &invocation.ifname)
        .env(
            "CNI_PATH",
            std::env::join_paths(&invocation.path).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| Error::IOFailure(format!("running {}: {error}", program.display())))?;
    let io_failure =
        |error: std::io::Error| Error::IOFailure(format!("running {}: {error}", program.display()));
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io_failure(std::io::ErrorKind::BrokenPipe.into()))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io_failure(std::io::ErrorKind::BrokenPipe.into()))?;
    let exchange = async {
        stdin.write_all(config).await?;
        drop(stdin);
        let mut output = Vec::new();
        (&mut stdout)
            .take(MAX_OUTPUT_BYTES)
            .read_to_end(&mut output)
            .await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, output))
    };
    let (status, output) = tokio::time::timeout(DELEGATE_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            Error::IOFailure(format!(
                "{} did not finish within {} s",
                program.display(),
                DELEGATE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(io_failure)?;
    if !status.success() {
        return Err(match serde_json::from_slice::<ErrorResult>(&output) {
            Ok(result) => Error::from(result),
            Err(_) => Error::Custom(
                102,
                "IPAM plugin failed".to_owned(),
                format!(
                    "{} {command} failed ({status}): {}",
                    program.display(),
                    String::from_utf8_lossy(&output).trim()
                ),
            ),
        });
    }
    Ok(output)
}
