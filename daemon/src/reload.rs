//! Reload: the configuration file and the policies read again and put in
//! force as one new generation, or nothing changed. One path for SIGHUP
//! (`systemctl reload`) and `POST /v1/reload` (`palisadectl reload`).
//!
//! Every setting that can change while palisaded runs does: `[node]` labels
//! and addresses, `[policy]` audit_mode and fqdn_audit, `[cluster]`,
//! `[failsafe]`, the prefilter list, conntrack timeouts and `ct_full`, flow
//! sampling and the event budget, WireGuard's `[[nodes]]` and `strict`.
//! A change to any other setting is refused by name, with nothing changed:
//! those need a restart.

use std::path::PathBuf;

use palisade_api::{ApplyResponse, Failsafe};
use palisade_policy::NodeContext;
use tracing::warn;

use crate::{
    config::{
        Config, ConfigError, ConfigFile, ControlConfig, DatapathConfig, EncryptionConfig,
        FlowsConfig, IpsecConfig, MetricsConfig, NodeConfig, PolicyConfig, Service,
        WireGuardConfig,
    },
    datapath::EnforcementSettings,
    encryption::Encryption,
    engine::{ApplyError, Engine, Reconfiguration},
};

/// Command-line options that replace settings of the file (`--socket`,
/// `--policy-dir`, `--state-dir`); they hold across reloads.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--policy-dir`.
    pub policy_dir: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
}

impl Overrides {
    /// Puts the overrides into `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(socket) = &self.socket {
            config.control.socket.clone_from(socket);
        }
        if let Some(directory) = &self.policy_dir {
            config.policy.directory.clone_from(directory);
        }
        if let Some(directory) = &self.state_dir {
            config.policy.state_directory.clone_from(directory);
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Settings changed that only a restart puts in force.
    #[error(
        "{} changed in {}: {} only with a restart (systemctl restart palisade); nothing was changed",
        .settings.join(", "),
        .file.display(),
        if .settings.len() == 1 { "it takes effect" } else { "they take effect" }
    )]
    NeedsRestart {
        /// The configuration file.
        file: PathBuf,
        /// The settings, as `section.key`.
        settings: Vec<&'static str>,
    },
    /// The encryption backend refused the new `[[nodes]]`.
    #[error("the encryption backend refused the nodes; nothing was changed: {0:#}")]
    Encryption(anyhow::Error),
    /// The policies or the datapath refused the new generation.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The running configuration and where it comes from.
#[derive(Debug)]
pub struct Reloader {
    file: ConfigFile,
    overrides: Overrides,
    running: Config,
}

impl Reloader {
    /// A reloader for palisaded started with `running`, read from `file`
    /// with `overrides` applied.
    pub fn new(file: ConfigFile, overrides: Overrides, running: Config) -> Self {
        Self {
            file,
            overrides,
            running,
        }
    }

    /// Reads the configuration file again and puts it in force with the
    /// policies (the directory and the saved ones) as one new generation;
    /// the encryption's nodes follow. On any error nothing is changed.
    ///
    /// # Errors
    ///
    /// [`ReloadError`]: the file does not load, a setting needs a restart,
    /// the encryption backend or the engine refused.
    pub fn reload(
        &mut self,
        engine: &mut Engine,
        encryption: Option<&Encryption>,
    ) -> Result<ApplyResponse, ReloadError> {
        let mut config = self.file.load()?;
        self.overrides.apply(&mut config);
        let settings = restart_only_changes(&self.running, &config);
        if !settings.is_empty() {
            return Err(ReloadError::NeedsRestart {
                file: self.file.path().to_owned(),
                settings,
            });
        }
        if let Some(encryption) = encryption {
            encryption
                .reconcile(&config)
                .map_err(ReloadError::Encryption)?;
        }
        match engine.reconfigure(reconfiguration(&config)) {
            Ok(response) => {
                self.running = config;
                Ok(response)
            }
            Err(error) => {
                if let Some(encryption) = encryption
                    && let Err(back) = encryption.reconcile(&self.running)
                {
                    warn!(
                        error = format!("{back:#}"),
                        "the reload was refused and the encryption's nodes could not be put back"
                    );
                }
                Err(error.into())
            }
        }
    }
}

/// What `config` sets that a running engine can change.
pub fn reconfiguration(config: &Config) -> Reconfiguration {
    Reconfiguration {
        node: NodeContext {
            labels: config.node.labels.clone(),
            audit_mode: config.policy.audit_mode,
            fqdn_audit: config.policy.fqdn_audit,
            addresses: config.node.addresses.clone(),
            cluster: config.cluster_context(),
            strict_prefixes: config.strict_prefixes(),
        },
        failsafe: failsafe_status(config),
        enforcement: EnforcementSettings::from_config(config),
    }
}

/// The failsafe services as status shows them.
pub fn failsafe_status(config: &Config) -> Failsafe {
    let names = |services: &[Service]| services.iter().map(ToString::to_string).collect();
    Failsafe {
        inbound: names(&config.failsafe.inbound),
        outbound: names(&config.failsafe.outbound),
        always: vec![
            "arp".to_owned(),
            "icmpv6 neighbour discovery and other RFC 4890 control messages".to_owned(),
            "non-IP frames".to_owned(),
        ],
    }
}

/// The settings that differ between `running` and `new` and that only a
/// restart puts in force. Each section is taken apart field by field, so a
/// new setting cannot be added without deciding which kind it is.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            changed.push(name);
        }
    };
    let NodeConfig {
        name,
        labels: _,
        addresses: _,
        pod_cidrs: _,
    } = &running.node;
    check("node.name", *name == new.node.name);
    let DatapathConfig {
        interfaces,
        xdp_mode,
        attach,
        pin_path,
        prefilter: _,
        policy_map_max,
        rule_set_max,
        ct_tcp_max,
        ct_any_max,
        ct_full: _,
        ct_timeouts: _,
    } = &running.datapath;
    check(
        "datapath.interfaces",
        *interfaces == new.datapath.interfaces,
    );
    check("datapath.xdp_mode", *xdp_mode == new.datapath.xdp_mode);
    check("datapath.attach", *attach == new.datapath.attach);
    check("datapath.pin_path", *pin_path == new.datapath.pin_path);
    check(
        "datapath.policy_map_max",
        *policy_map_max == new.datapath.policy_map_max,
    );
    check(
        "datapath.rule_set_max",
        *rule_set_max == new.datapath.rule_set_max,
    );
    check(
        "datapath.ct_tcp_max",
        *ct_tcp_max == new.datapath.ct_tcp_max,
    );
    check(
        "datapath.ct_any_max",
        *ct_any_max == new.datapath.ct_any_max,
    );
    let PolicyConfig {
        directory,
        state_directory,
        audit_mode: _,
        fqdn_audit: _,
    } = &running.policy;
    check("policy.directory", *directory == new.policy.directory);
    check(
        "policy.state_directory",
        *state_directory == new.policy.state_directory,
    );
    let ControlConfig {
        socket,
        group,
        admin_group,
    } = &running.control;
    check("control.socket", *socket == new.control.socket);
    check("control.group", *group == new.control.group);
    check(
        "control.admin_group",
        *admin_group == new.control.admin_group,
    );
    let FlowsConfig {
        buffer,
        log_per_second,
        forward_sample_rate: _,
        events_per_second: _,
    } = &running.flows;
    check("flows.buffer", *buffer == new.flows.buffer);
    check(
        "flows.log_per_second",
        *log_per_second == new.flows.log_per_second,
    );
    let MetricsConfig { listen } = &running.metrics;
    check("metrics.listen", *listen == new.metrics.listen);
    let EncryptionConfig { mode } = &running.encryption;
    check("encryption.mode", *mode == new.encryption.mode);
    let IpsecConfig {
        keys_file: _,
        mode,
        key_rotation_window: _,
        strict: _,
    } = &running.ipsec;
    check("ipsec.mode", *mode == new.ipsec.mode);
    let WireGuardConfig {
        interface,
        listen_port,
        private_key_file,
        userspace_fallback,
        userspace_threads,
        strict: _,
    } = &running.wireguard;
    let wireguard = &new.wireguard;
    check("wireguard.interface", *interface == wireguard.interface);
    check(
        "wireguard.listen_port",
        *listen_port == wireguard.listen_port,
    );
    check(
        "wireguard.private_key_file",
        *private_key_file == wireguard.private_key_file,
    );
    check(
        "wireguard.userspace_fallback",
        *userspace_fallback == wireguard.userspace_fallback,
    );
    check(
        "wireguard.userspace_threads",
        *userspace_threads == wireguard.userspace_threads,
    );
    // `[failsafe]`, `[cluster]` and `[[nodes]]` reload whole.
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        palisade_policy::from_toml("palisade.toml", text).expect("a config")
    }

    #[test]
    fn reloadable_settings_are_not_refused() {
        let running = Config::default();
        let new = config(
            r#"
[node]
labels = { role = "edge" }
addresses = ["10.0.0.1/32"]
[policy]
audit_mode = true
fqdn_audit = true
[failsafe]
inbound = []
[datapath]
prefilter = ["192.0.2.0/24"]
ct_full = "drop"
[flows]
forward_sample_rate = 5
events_per_second = 10
[wireguard]
strict = true
"#,
        );
        assert_eq!(restart_only_changes(&running, &new), Vec::<&str>::new());
    }

    #[test]
    fn restart_only_settings_are_named() {
        let running = Config::default();
        let new = config(
            r#"
[datapath]
interfaces = ["eth9"]
ct_tcp_max = 10
[control]
group = "wheel"
[metrics]
listen = "127.0.0.1:9962"
"#,
        );
        assert_eq!(
            restart_only_changes(&running, &new),
            [
                "datapath.interfaces",
                "datapath.ct_tcp_max",
                "control.group",
                "metrics.listen"
            ]
        );
    }
}
