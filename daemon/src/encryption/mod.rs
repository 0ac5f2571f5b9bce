//! Encryption between nodes: one seam over the backends, chosen by
//! `encryption.mode` — WireGuard ([`wireguard`]) or IPsec ([`ipsec`]: the
//! shell over its pure core, [`ipsec_keys`] (the key file and per-node-pair
//! keys) and [`ipsec_plan`] (the XFRM states and policies of the mesh),
//! written through [`xfrm`]). The rest of the daemon (control socket,
//! reload, metrics, shutdown) sees only [`Encryption`].

pub mod ipsec;
pub mod ipsec_keys;
pub mod ipsec_plan;
pub mod wireguard;
pub mod xfrm;

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use anyhow::Context as _;
use palisade_api::{EncryptionMode, EncryptionStatus};
use tracing::warn;

use crate::config::{Config, EncryptionMode as ConfiguredMode, WireGuardPeer};
use wireguard::Tunnel;

/// The encryption in force: one backend.
pub enum Encryption {
    /// A WireGuard tunnel to each node.
    WireGuard(Arc<Tunnel>),
    /// IPsec states and policies for each node.
    Ipsec(Arc<ipsec::IpsecMesh>),
}

impl Encryption {
    /// Starts the backend `encryption.mode` names, with its background
    /// work; `None` when encryption is off.
    ///
    /// # Errors
    ///
    /// When the backend cannot be set up.
    pub fn start(config: &Config) -> anyhow::Result<Option<Self>> {
        match config.encryption.mode {
            ConfiguredMode::None => Ok(None),
            ConfiguredMode::Wireguard => {
                let tunnel = Arc::new(
                    Tunnel::start(&config.wireguard, &wireguard_peers(config)?)
                        .context("setting up the WireGuard tunnel")?,
                );
                // Nodes switching to their next key, four times a second.
                spawn_upkeep(
                    Arc::downgrade(&tunnel),
                    Duration::from_millis(250),
                    "checking the nodes' next keys",
                    Tunnel::promote_rotated_nodes,
                );
                Ok(Some(Self::WireGuard(tunnel)))
            }
            ConfiguredMode::Ipsec => {
                let mesh =
                    Arc::new(ipsec::IpsecMesh::start(config).context("setting up the IPsec mesh")?);
                // Older keys to remove, every second.
                spawn_upkeep(
                    Arc::downgrade(&mesh),
                    Duration::from_secs(1),
                    "checking the IPsec keys for removal",
                    ipsec::IpsecMesh::retire_old_keys,
                );
                Ok(Some(Self::Ipsec(mesh)))
            }
        }
    }

    /// Checks what the backend reads (the IPsec key file) before palisaded
    /// loads anything.
    ///
    /// # Errors
    ///
    /// When it is refused, with its place.
    pub fn preflight(config: &Config) -> anyhow::Result<()> {
        match config.encryption.mode {
            ConfiguredMode::Ipsec => ipsec::check(config),
            ConfiguredMode::None | ConfiguredMode::Wireguard => Ok(()),
        }
    }

    /// The backend's state, for `/v1/encryption` and the metrics.
    ///
    /// # Errors
    ///
    /// When the backend cannot be read.
    pub fn status(&self) -> anyhow::Result<EncryptionStatus> {
        match self {
            Self::WireGuard(tunnel) => Ok(EncryptionStatus {
                mode: EncryptionMode::Wireguard,
                wireguard: Some(tunnel.status()?),
                ipsec: None,
            }),
            Self::Ipsec(mesh) => Ok(EncryptionStatus {
                mode: EncryptionMode::Ipsec,
                wireguard: None,
                ipsec: Some(mesh.status()?),
            }),
        }
    }

    /// Puts `config`'s nodes in force (on reload).
    ///
    /// # Errors
    ///
    /// When the backend refuses them; what was in force stays.
    pub fn reconcile(&self, config: &Config) -> anyhow::Result<()> {
        match self {
            Self::WireGuard(tunnel) => tunnel.reconcile(&wireguard_peers(config)?),
            Self::Ipsec(mesh) => mesh.reconcile(config),
        }
    }

    /// The WireGuard tunnel, in mode `wireguard` (for its own endpoints:
    /// `/v1/wireguard`, key rotation).
    pub fn wireguard(&self) -> Option<&Arc<Tunnel>> {
        match self {
            Self::WireGuard(tunnel) => Some(tunnel),
            Self::Ipsec(_) => None,
        }
    }

    /// Resolves when the backend has stopped by itself (a userspace
    /// WireGuard device gone): palisaded stops then.
    pub async fn stopped(&self) {
        match self {
            Self::WireGuard(tunnel) => tunnel.stopped().await,
            Self::Ipsec(_) => std::future::pending().await,
        }
    }
}

/// The tunnel's peers: every node, each with its `[nodes.wireguard]` table.
///
/// # Errors
///
/// When a node has none ([`Config::node_outside_the_tunnel`]).
fn wireguard_peers(config: &Config) -> anyhow::Result<Vec<WireGuardPeer>> {
    if let Some(problem) = config.node_outside_the_tunnel() {
        anyhow::bail!(problem);
    }
    Ok(config.wireguard_peers())
}

/// `/v1/encryption` when encryption is off.
pub fn disabled() -> EncryptionStatus {
    EncryptionStatus {
        mode: EncryptionMode::Disabled,
        wireguard: None,
        ipsec: None,
    }
}

/// Runs `upkeep` on the backend every `period`, on a thread of its own,
/// for as long as the backend lives: it holds the backend only while
/// running, so a shutdown still drops it (and with it what it set up). A
/// failure is logged as `what` once, until it changes or clears.
fn spawn_upkeep<T: Send + Sync + 'static>(
    backend: Weak<T>,
    period: Duration,
    what: &'static str,
    upkeep: impl Fn(&T) -> anyhow::Result<()> + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut last_error = String::new();
        loop {
            std::thread::sleep(period);
            let Some(backend) = backend.upgrade() else {
                return;
            };
            match upkeep(&backend) {
                Ok(()) => last_error.clear(),
                Err(error) => {
                    let error = format!("{error:#}");
                    if error != last_error {
                        warn!(%error, "{what}");
                        last_error = error;
                    }
                }
            }
        }
    });
}
