//! The WireGuard node mesh: one tunnel interface, a peer per `[[nodes]]`
//! entry, and routes to their prefixes through it.
//!
//! The kernel's WireGuard is used when the kernel has it; otherwise, when
//! `wireguard.userspace_fallback` allows, an in-process userspace WireGuard
//! (boringtun, through `defguard_wireguard_rs`) that serves the standard
//! UAPI socket, so `wg show` works either way. The private key lives in
//! `wireguard.private_key_file` (created 0600 when missing) and is never
//! logged or returned.

use std::{
    collections::BTreeSet,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi, host::Host, key::Key,
    net::IpAddrMask, peer::Peer,
};
use palisade_api::{WireGuardPeerStatus, WireGuardStatus};
use tracing::{info, warn};

use crate::{
    atomic_file::write_atomically,
    config::{PeerNode, WireGuardConfig},
};

/// Where userspace WireGuard implementations serve their UAPI sockets.
const UAPI_DIRECTORY: &str = "/var/run/wireguard";

/// The implementation behind the tunnel interface.
enum Backend {
    Kernel(WGApi<Kernel>),
    Userspace(WGApi<Userspace>),
}

impl Backend {
    fn api(&self) -> &dyn WireguardInterfaceApi {
        match self {
            Self::Kernel(api) => api,
            Self::Userspace(api) => api,
        }
    }
}

/// A running tunnel; the interface is removed on drop.
pub struct Tunnel {
    backend: Backend,
    /// Why this backend was chosen.
    reason: String,
    interface: String,
    listen_port: u16,
    key_file: PathBuf,
    /// The key pair and the nodes in force, changed by rotation and reload.
    state: Mutex<TunnelState>,
}

/// What rotation and reload change.
struct TunnelState {
    private_key: Key,
    nodes: Vec<PeerNode>,
}

impl Tunnel {
    /// Creates the interface, configures this node's key and port and one
    /// peer per node, and routes the nodes' prefixes through it.
    ///
    /// # Errors
    ///
    /// When the nodes are inconsistent, the key file cannot be read or
    /// created, no backend is available, or the interface cannot be set up.
    pub fn start(config: &WireGuardConfig, nodes: &[PeerNode]) -> anyhow::Result<Self> {
        check_nodes(nodes)?;
        let private_key = load_or_create_key(&config.private_key_file)?;
        let (backend, reason) = create_interface(config)?;
        publish_public_key(&config.private_key_file, &private_key.public_key())?;
        let tunnel = Self {
            backend,
            reason,
            interface: config.interface.clone(),
            listen_port: config.listen_port,
            key_file: config.private_key_file.clone(),
            state: Mutex::new(TunnelState {
                private_key,
                nodes: nodes.to_vec(),
            }),
        };
        tunnel.apply(&tunnel.lock())?;
        info!(
            interface = %config.interface,
            backend = tunnel.backend_name(),
            reason = %tunnel.reason,
            public_key = %tunnel.lock().private_key.public_key(),
            listen_port = config.listen_port,
            nodes = nodes.len(),
            "WireGuard tunnel up"
        );
        Ok(tunnel)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TunnelState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the key and the whole peer set to the interface (replacing
    /// the peers it had) and routes every node's prefixes through it.
    fn apply(&self, state: &TunnelState) -> anyhow::Result<()> {
        let peers: Vec<Peer> = state.nodes.iter().map(peer).collect();
        let interface = InterfaceConfiguration {
            name: self.interface.clone(),
            prvkey: state.private_key.to_string(),
            addresses: Vec::new(),
            port: self.listen_port,
            peers: peers.clone(),
            mtu: None,
            fwmark: None,
        };
        let api = self.backend.api();
        api.configure_interface(&interface)
            .with_context(|| format!("configuring WireGuard interface {}", self.interface))?;
        api.configure_peer_routing(&peers)
            .with_context(|| format!("routing the nodes' prefixes through {}", self.interface))
    }

    /// Makes a new key pair, saves it (mode 0600, and the public key beside
    /// it), and switches the interface to it; returns the new public key.
    /// The other nodes need it in their `[[nodes]]` before they can talk to
    /// this one again.
    ///
    /// # Errors
    ///
    /// When the key cannot be saved or the interface refuses it; the old
    /// key then stays in force.
    pub fn rotate_key(&self) -> anyhow::Result<String> {
        let mut state = self.lock();
        let private_key = Key::generate();
        save_key(&self.key_file, &private_key)?;
        let public_key = private_key.public_key();
        publish_public_key(&self.key_file, &public_key)?;
        let previous = std::mem::replace(&mut state.private_key, private_key);
        if let Err(error) = self.apply(&state) {
            save_key(&self.key_file, &previous)?;
            publish_public_key(&self.key_file, &previous.public_key())?;
            state.private_key = previous;
            return Err(error);
        }
        info!(interface = %self.interface, public_key = %public_key, "WireGuard key rotated");
        Ok(public_key.to_string())
    }

    /// Puts `nodes` in force in place of the current ones, without taking
    /// the interface down. Routes of nodes that are gone stay on the tunnel
    /// interface, where WireGuard drops what no peer takes.
    ///
    /// # Errors
    ///
    /// When the nodes are inconsistent or the interface refuses them.
    pub fn reconcile(&self, nodes: &[PeerNode]) -> anyhow::Result<()> {
        check_nodes(nodes)?;
        let mut state = self.lock();
        if state.nodes == nodes {
            return Ok(());
        }
        let previous = std::mem::replace(&mut state.nodes, nodes.to_vec());
        if let Err(error) = self.apply(&state) {
            state.nodes = previous;
            return Err(error);
        }
        info!(interface = %self.interface, nodes = nodes.len(), "WireGuard nodes updated");
        Ok(())
    }

    /// Resolves when the tunnel's device has stopped by itself: boringtun
    /// stops its device when it takes a SIGTERM or SIGINT meant for
    /// palisaded, so palisaded stops too rather than run without a tunnel.
    pub async fn stopped(&self) {
        if let Backend::Kernel(_) = self.backend {
            return std::future::pending().await;
        }
        let socket = Path::new(UAPI_DIRECTORY).join(format!("{}.sock", self.interface));
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let asked = socket.clone();
            let answered = tokio::task::spawn_blocking(move || uapi_answers(&asked))
                .await
                .unwrap_or(false);
            if !answered {
                warn!(interface = %self.interface, "the userspace WireGuard device stopped");
                return;
            }
        }
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Kernel(_) => "kernel",
            Backend::Userspace(_) => "userspace",
        }
    }

    /// What `wg show` would say, with the nodes' names.
    ///
    /// # Errors
    ///
    /// When the interface cannot be read.
    pub fn status(&self) -> anyhow::Result<WireGuardStatus> {
        let host: Host = self
            .backend
            .api()
            .read_interface_data()
            .with_context(|| format!("reading WireGuard interface {}", self.interface))?;
        let now = SystemTime::now();
        let state = self.lock();
        let peers = state
            .nodes
            .iter()
            .map(|node| {
                let key = Key::new(node.public_key.0);
                let live = host.peers.get(&key);
                WireGuardPeerStatus {
                    name: node.name.clone(),
                    public_key: node.public_key.to_string(),
                    endpoint: live
                        .and_then(|peer| peer.endpoint)
                        .unwrap_or(node.endpoint)
                        .to_string(),
                    allowed_ips: node.allowed_ips.iter().map(ToString::to_string).collect(),
                    latest_handshake_seconds_ago: live
                        .and_then(|peer| peer.last_handshake)
                        .filter(|at| *at > SystemTime::UNIX_EPOCH)
                        .and_then(|at| now.duration_since(at).ok())
                        .map(|age| age.as_secs()),
                    rx_bytes: live.map_or(0, |peer| peer.rx_bytes),
                    tx_bytes: live.map_or(0, |peer| peer.tx_bytes),
                }
            })
            .collect();
        Ok(WireGuardStatus {
            interface: self.interface.clone(),
            backend: self.backend_name().to_owned(),
            backend_reason: self.reason.clone(),
            public_key: state.private_key.public_key().to_string(),
            listen_port: host.listen_port,
            peers,
        })
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Err(error) = self.backend.api().remove_interface() {
            warn!(interface = %self.interface, %error, "removing the WireGuard interface");
        }
    }
}

/// Whether a UAPI socket answers a `get` within a second (a stopped
/// boringtun keeps its socket open but no longer reads it). Not the
/// backend's `read_interface_data`: the blocking read would hold the
/// `Tunnel` for up to its 3-second timeout, so a shutdown could exit before
/// the tunnel is dropped and leave its interface and socket behind.
fn uapi_answers(socket: &Path) -> bool {
    use std::io::{BufRead as _, BufReader};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let timeout = Some(std::time::Duration::from_secs(1));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(b"get=1\n\n").is_err() {
        return false;
    }
    BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("errno="))
}

/// The peer for one node.
fn peer(node: &PeerNode) -> Peer {
    let mut peer = Peer::new(Key::new(node.public_key.0));
    peer.endpoint = Some(node.endpoint);
    peer.allowed_ips = node
        .allowed_ips
        .iter()
        .map(|prefix| IpAddrMask::new(prefix.addr(), prefix.prefix_len()))
        .collect();
    peer
}

/// Refuses node lists that would hijack this host's routing.
fn check_nodes(nodes: &[PeerNode]) -> anyhow::Result<()> {
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for node in nodes {
        if !names.insert(node.name.as_str()) {
            bail!("[[nodes]]: the name {:?} is used twice", node.name);
        }
        if !keys.insert(node.public_key.0) {
            bail!(
                "[[nodes]] {:?}: its public key is another node's too",
                node.name
            );
        }
        for prefix in &node.allowed_ips {
            if prefix.prefix_len() == 0 {
                bail!(
                    "[[nodes]] {:?}: allowed_ips {prefix} would send all traffic into the tunnel; list the node's own prefixes",
                    node.name
                );
            }
            if prefix.contains(&node.endpoint.ip()) {
                bail!(
                    "[[nodes]] {:?}: allowed_ips {prefix} contains the node's endpoint {}: the tunnel's own packets would be routed into the tunnel",
                    node.name,
                    node.endpoint
                );
            }
        }
    }
    Ok(())
}

/// The kernel's WireGuard if it has one; else the userspace one if allowed.
fn create_interface(config: &WireGuardConfig) -> anyhow::Result<(Backend, String)> {
    let mut kernel = WGApi::<Kernel>::new(config.interface.clone())?;
    let kernel_error = match kernel.create_interface() {
        Ok(()) => {
            return Ok((
                Backend::Kernel(kernel),
                "the kernel has WireGuard".to_owned(),
            ));
        }
        Err(error) => error,
    };
    if !config.userspace_fallback {
        bail!(
            "the kernel has no WireGuard ({kernel_error}) and wireguard.userspace_fallback is off"
        );
    }
    let mut userspace = WGApi::<Userspace>::new(config.interface.clone())?;
    // boringtun blocks SIGTERM and SIGINT in the thread that creates the
    // device (and the threads it starts) to read them from a signalfd; a
    // thread of its own keeps them unblocked in palisaded's threads, so that
    // palisaded, not the tunnel, owns shutdown.
    let interface = config.interface.clone();
    let userspace = std::thread::spawn(move || {
        userspace
            .create_interface()
            .map(|()| userspace)
            .with_context(|| format!("creating userspace WireGuard interface {interface}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread creating the userspace WireGuard device panicked"))?
    .with_context(|| format!("the kernel has no WireGuard: {kernel_error}"))?;
    Ok((
        Backend::Userspace(userspace),
        format!("the kernel has no WireGuard ({kernel_error}); userspace fallback"),
    ))
}

/// Writes `key` to `path` with mode 0600, atomically.
fn save_key(path: &Path, key: &Key) -> anyhow::Result<()> {
    write_atomically(path, &format!("{key}\n"), 0o600)
}

/// Writes the public key beside the private one (`wireguard.pub` for
/// `wireguard.key`), for the other nodes' configuration.
fn publish_public_key(private_key_file: &Path, public_key: &Key) -> anyhow::Result<()> {
    let path = private_key_file.with_extension("pub");
    std::fs::write(&path, format!("{public_key}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads the private key, or makes one and writes it with mode 0600.
fn load_or_create_key(path: &Path) -> anyhow::Result<Key> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the WireGuard private key is readable by others; chmod 600 it"
                );
            }
            text.trim().parse::<Key>().map_err(|_| {
                anyhow::anyhow!(
                    "{}: not a WireGuard private key (32 bytes in base64, as `wg genkey` writes)",
                    path.display()
                )
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let key = Key::generate();
            save_key(path, &key)?;
            info!(path = %path.display(), "created a WireGuard private key");
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WireGuardKey;

    fn node(name: &str, endpoint: &str, allowed: &[&str], key: u8) -> PeerNode {
        PeerNode {
            name: name.to_owned(),
            endpoint: endpoint.parse().unwrap(),
            public_key: WireGuardKey([key; 32]),
            allowed_ips: allowed.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn nodes_that_would_hijack_routing_are_refused() {
        assert!(check_nodes(&[node("b", "192.0.2.2:51871", &["10.1.0.0/16"], 1)]).is_ok());
        let everything = check_nodes(&[node("b", "192.0.2.2:51871", &["0.0.0.0/0"], 1)]);
        assert!(format!("{everything:?}").contains("all traffic into the tunnel"));
        let endpoint = check_nodes(&[node("b", "192.0.2.2:51871", &["192.0.2.0/24"], 1)]);
        assert!(format!("{endpoint:?}").contains("contains the node's endpoint"));
        let twice = check_nodes(&[
            node("b", "192.0.2.2:51871", &["10.1.0.0/16"], 1),
            node("b", "192.0.2.3:51871", &["10.2.0.0/16"], 2),
        ]);
        assert!(format!("{twice:?}").contains("used twice"));
    }

    #[test]
    fn a_missing_key_is_created_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("palisade-wg-key-{}", std::process::id()));
        let path = dir.join("sub/wireguard.key");
        let created = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = load_or_create_key(&path).unwrap();
        assert_eq!(created.to_string(), read.to_string());
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(load_or_create_key(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
