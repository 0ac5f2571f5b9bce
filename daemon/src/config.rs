//! palisaded's configuration file (`/etc/palisade/palisade.toml`).
//!
//! Every key has a default; a missing file means all defaults. `etc/palisade.toml`
//! in the source tree documents each key and must stay in step with this file
//! (a test parses it).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use palisade_policy::{Diagnostics, from_toml};
use serde::Deserialize;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/palisade/palisade.toml";

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node.
    pub node: NodeConfig,
    /// The enforcing datapath.
    pub datapath: DatapathConfig,
    /// Where policies come from and how they are enforced.
    pub policy: PolicyConfig,
    /// The control socket.
    pub control: ControlConfig,
    /// The flow buffer.
    pub flows: FlowsConfig,
    /// The Prometheus listener.
    pub metrics: MetricsConfig,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on; no listener when unset.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[node]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node name shown in flows; the host name when unset.
    pub name: Option<String>,
    /// Labels matched by policies' `nodeSelector`.
    pub labels: BTreeMap<String, String>,
}

/// `[datapath]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// Interfaces to enforce on. Empty: enforce nowhere (and say so in the log).
    pub interfaces: Vec<String>,
    /// How to attach XDP.
    pub xdp_mode: XdpModeConfig,
}

/// `datapath.xdp_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native mode only; fail if the driver lacks it.
    Native,
    /// Generic (skb) mode.
    Generic,
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory whose `*.toml` files are loaded at start, in name order.
    pub directory: PathBuf,
    /// Forward would-be drops and report them with verdict AUDIT.
    pub audit_mode: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("/etc/palisade/policies.d"),
            audit_mode: false,
        }
    }
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Path of the control socket.
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(palisade_api::DEFAULT_SOCKET),
        }
    }
}

/// `[flows]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// How many recent flows the daemon keeps for `palisadectl observe`.
    pub buffer: usize,
    /// Drops and audits written to the log (the journal's audit trail) per
    /// second at most; the rest are counted and the count is logged. 0: none.
    pub log_per_second: u32,
    /// Whether forwarded packets produce flows; drops and audits always do.
    pub forward_events: bool,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            buffer: 4096,
            log_per_second: 10,
            forward_events: true,
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the file cannot be read or is invalid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(from_toml(&path.display().to_string(), &text)?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/palisade.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Every key is commented out at its default, so the file means the defaults...
        let is_key = |key: &str| key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let uncommented: String = text
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|l| l.split_once(" = ").is_some_and(|(key, _)| is_key(key)))
                    .unwrap_or(line)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: Config = from_toml("palisade.toml", &text).unwrap();
        let spelled_out: Config = from_toml("palisade.toml", &uncommented).unwrap();
        assert_eq!(parsed.policy, PolicyConfig::default());
        // ...and uncommenting every documented key gives the defaults back,
        // except the interface list, which the example fills in, and the node
        // name, whose default (the host name) is only known at run time.
        let mut expected = Config::default();
        expected.datapath.interfaces = vec!["eth0".to_owned()];
        expected.node.name = Some("node-1".to_owned());
        assert_eq!(spelled_out, expected);
    }

    #[test]
    fn missing_file_means_defaults() {
        let config = Config::load(Path::new("/nonexistent/palisade.toml")).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_key_is_placed() {
        let error =
            from_toml::<Config>("c.toml", "[datapath]\ninterface = [\"eth0\"]\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "c.toml:2:1: datapath.interface: unknown field `interface`, expected `interfaces` or `xdp_mode`"
        );
    }
}
