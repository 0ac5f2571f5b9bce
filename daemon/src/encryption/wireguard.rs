//! The WireGuard node mesh: one tunnel interface, a peer per `[[nodes]]`
//! entry, and routes to their prefixes through it.
//!
//! The kernel's WireGuard is used when the kernel has it; otherwise, when
//! `wireguard.userspace_fallback` allows, an in-process userspace WireGuard
//! (boringtun, through `defguard_wireguard_rs`) that serves the standard
//! UAPI socket, so `wg show` works either way. The private key lives in
//! `wireguard.private_key_file` (created 0600 when missing) and is never
//! logged or returned.
//!
//! Key rotation in two steps keeps the tunnel up: `rotate-key --stage` makes
//! the next key pair (saved beside the current one) and publishes its public
//! key; the other nodes list it as that node's `next_public_key`, which they
//! add as a standby peer with no prefixes; `rotate-key` then switches. The
//! other nodes see the new key's first handshake on the standby peer and
//! move the node's prefixes to it ([`Tunnel::promote_rotated_nodes`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use defguard_boringtun::device::{DeviceConfig, DeviceHandle};
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi, host::Host, key::Key,
    net::IpAddrMask, peer::Peer,
};
use palisade_api::{WireGuardPeerStatus, WireGuardStatus};
use tracing::{info, warn};

use crate::{
    atomic_file::write_atomically,
    config::{WireGuardConfig, WireGuardPeer},
};

/// Where userspace WireGuard implementations serve their UAPI sockets.
const UAPI_DIRECTORY: &str = "/var/run/wireguard";

/// The implementation behind the tunnel interface.
enum Backend {
    Kernel(WGApi<Kernel>),
    /// boringtun in palisaded, configured over its UAPI socket.
    Userspace {
        api: WGApi<Userspace>,
        /// Held only to be dropped with the backend: that stops the device.
        _device: DeviceHandle,
    },
}

impl Backend {
    fn api(&self) -> &dyn WireguardInterfaceApi {
        match self {
            Self::Kernel(api) => api,
            Self::Userspace { api, .. } => api,
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
    /// The key pair `rotate-key --stage` made, used by the next rotation.
    staged_key: Option<Key>,
    nodes: Vec<WireGuardPeer>,
    /// Nodes whose `next_public_key` has handshaken, with that key: it is
    /// the node's key in force until the configuration catches up.
    promoted: BTreeMap<String, [u8; 32]>,
}

impl TunnelState {
    /// The key in force for `node`.
    fn key_of(&self, node: &WireGuardPeer) -> [u8; 32] {
        match (&node.next_public_key, self.promoted.get(&node.name)) {
            (Some(next), Some(promoted)) if next.0 == *promoted => next.0,
            _ => node.public_key.0,
        }
    }

    /// A node's `next_public_key` that still waits for its first handshake.
    fn standby_of(&self, node: &WireGuardPeer) -> Option<[u8; 32]> {
        node.next_public_key
            .as_ref()
            .map(|next| next.0)
            .filter(|next| *next != self.key_of(node))
    }

    /// Every peer: each node's key in force with its prefixes, and its
    /// standby key, if any, with none.
    fn peers(&self) -> Vec<Peer> {
        let mut peers = Vec::new();
        for node in &self.nodes {
            peers.push(peer(node, self.key_of(node), false));
            if let Some(standby) = self.standby_of(node) {
                peers.push(peer(node, standby, true));
            }
        }
        peers
    }
}

impl Tunnel {
    /// Creates the interface, configures this node's key and port and one
    /// peer per node, and routes the nodes' prefixes through it.
    ///
    /// # Errors
    ///
    /// When the nodes are inconsistent, the key file cannot be read or
    /// created, no backend is available, or the interface cannot be set up.
    pub fn start(config: &WireGuardConfig, nodes: &[WireGuardPeer]) -> anyhow::Result<Self> {
        check_nodes(nodes)?;
        let private_key = load_or_create_key(&config.private_key_file)?;
        let staged_key = load_staged_key(&config.private_key_file)?;
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
                staged_key,
                nodes: nodes.to_vec(),
                promoted: BTreeMap::new(),
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
        let peers = state.peers();
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

    /// Switches the tunnel to a new key pair — the staged one if there is
    /// one, else a fresh one — saved with mode 0600 and its public key beside
    /// it; returns the new public key. Nodes that list it as this node's
    /// `next_public_key` switch at its first handshake; the others need it
    /// in their `[[nodes]]` before they can talk to this one again.
    ///
    /// With `stage`, only makes the next key pair, saves it beside the
    /// current one and publishes its public key (`wireguard.pub.next`); the
    /// tunnel keeps its key.
    ///
    /// # Errors
    ///
    /// When a key cannot be saved or the interface refuses it; the old key
    /// then stays in force.
    pub fn rotate_key(&self, stage: bool) -> anyhow::Result<String> {
        let mut state = self.lock();
        if stage {
            let next = Key::generate();
            save_key(&staged_key_file(&self.key_file), &next)?;
            let public_key = next.public_key();
            publish(&staged_public_key_file(&self.key_file), &public_key)?;
            state.staged_key = Some(next);
            info!(interface = %self.interface, next_public_key = %public_key, "WireGuard key staged");
            return Ok(public_key.to_string());
        }
        let staged = state.staged_key.take();
        let was_staged = staged.is_some();
        let private_key = staged.unwrap_or_else(Key::generate);
        save_key(&self.key_file, &private_key)?;
        let public_key = private_key.public_key();
        publish_public_key(&self.key_file, &public_key)?;
        let previous = std::mem::replace(&mut state.private_key, private_key);
        if let Err(error) = self.apply(&state) {
            save_key(&self.key_file, &previous)?;
            publish_public_key(&self.key_file, &previous.public_key())?;
            let refused = std::mem::replace(&mut state.private_key, previous);
            if was_staged {
                state.staged_key = Some(refused);
            }
            return Err(error);
        }
        // Handshakes now, not at the next packet: nodes that hold this key
        // as a standby switch to it at that handshake.
        for node in &state.nodes {
            nudge(node);
        }
        for path in [
            staged_key_file(&self.key_file),
            staged_public_key_file(&self.key_file),
        ] {
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    warn!(path = %path.display(), %error, "removing the used staged key");
                }
                _ => {}
            }
        }
        info!(interface = %self.interface, public_key = %public_key, "WireGuard key rotated");
        Ok(public_key.to_string())
    }

    /// Moves each node whose `next_public_key` has made its first handshake
    /// over to that key: the old peer goes and the next key takes the node's
    /// endpoint and prefixes. Cheap when no node has a standby key (nothing
    /// is read).
    ///
    /// # Errors
    ///
    /// When the interface cannot be read or refuses the change.
    pub fn promote_rotated_nodes(&self) -> anyhow::Result<()> {
        let mut state = self.lock();
        let waiting: Vec<(WireGuardPeer, [u8; 32])> = state
            .nodes
            .iter()
            .filter_map(|node| state.standby_of(node).map(|key| (node.clone(), key)))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let api = self.backend.api();
        let host = api
            .read_interface_data()
            .with_context(|| format!("reading WireGuard interface {}", self.interface))?;
        for (node, next) in waiting {
            let handshaken = host
                .peers
                .get(&Key::new(next))
                .and_then(|peer| peer.last_handshake)
                .is_some_and(|at| at > SystemTime::UNIX_EPOCH);
            if !handshaken {
                continue;
            }
            // boringtun cannot change a peer in place: both keys go, and the
            // next one comes back with the node's endpoint and prefixes. Its
            // first session went with it, so a datagram into the tunnel
            // makes this side start the next one at once.
            let old = state.key_of(&node);
            for key in [next, old] {
                api.remove_peer(&Key::new(key))
                    .with_context(|| format!("removing a key of node {}", node.name))?;
            }
            api.configure_peer(&peer(&node, next, false))
                .with_context(|| format!("moving node {}'s prefixes to its next key", node.name))?;
            state.promoted.insert(node.name.clone(), next);
            nudge(&node);
            info!(
                interface = %self.interface,
                node = %node.name,
                public_key = %Key::new(next),
                "node switched to its next WireGuard key"
            );
        }
        Ok(())
    }

    /// Puts `nodes` in force in place of the current ones, without taking
    /// the interface down: only peers that are new, changed or gone are
    /// touched (a changed peer is removed and added again: boringtun cannot
    /// change a peer in place), so the other nodes' sessions go on. Routes
    /// of nodes that are gone stay on the tunnel interface, where WireGuard
    /// drops what no peer takes.
    ///
    /// # Errors
    ///
    /// When the nodes are inconsistent or the interface refuses them.
    pub fn reconcile(&self, nodes: &[WireGuardPeer]) -> anyhow::Result<()> {
        check_nodes(nodes)?;
        let mut state = self.lock();
        if state.nodes == nodes {
            return Ok(());
        }
        let before = state.peers();
        let previous = (state.nodes.clone(), state.promoted.clone());
        state.nodes = nodes.to_vec();
        // A switch stays in force while the node still lists that key next.
        state.promoted.retain(|name, key| {
            nodes.iter().any(|node| {
                node.name == *name && node.next_public_key.as_ref().is_some_and(|n| n.0 == *key)
            })
        });
        let after = state.peers();
        let same = |a: &Peer, b: &Peer| {
            a.public_key == b.public_key
                && a.endpoint == b.endpoint
                && a.allowed_ips == b.allowed_ips
        };
        let api = self.backend.api();
        let result = (|| -> anyhow::Result<()> {
            for old in &before {
                if !after.iter().any(|new| same(old, new)) {
                    api.remove_peer(&old.public_key)
                        .with_context(|| format!("removing peer {}", old.public_key))?;
                }
            }
            for new in &after {
                if !before.iter().any(|old| same(old, new)) {
                    api.configure_peer(new)
                        .with_context(|| format!("adding peer {}", new.public_key))?;
                }
            }
            api.configure_peer_routing(&after)
                .with_context(|| format!("routing the nodes' prefixes through {}", self.interface))
        })();
        if let Err(error) = result {
            // Back to the nodes as they were, written whole.
            (state.nodes, state.promoted) = previous;
            if let Err(again) = self.apply(&state) {
                warn!(interface = %self.interface, error = %format!("{again:#}"), "restoring the WireGuard configuration");
            }
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
            Backend::Userspace { .. } => "userspace",
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
                let key = Key::new(state.key_of(node));
                let live = host.peers.get(&key);
                WireGuardPeerStatus {
                    name: node.name.clone(),
                    public_key: key.to_string(),
                    next_public_key: state
                        .standby_of(node)
                        .map(|next| Key::new(next).to_string()),
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
            staged_public_key: state
                .staged_key
                .as_ref()
                .map(|key| key.public_key().to_string()),
            listen_port: host.listen_port,
            peers,
        })
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // The kernel's interface is deleted over rtnetlink directly: the
        // library's removal first reverts DNS settings palisade never makes,
        // and fails (leaving the interface) on hosts with neither
        // systemd-resolved nor resolvconf.
        let removed = match self.backend {
            Backend::Kernel(_) => crate::link::delete(&self.interface).map_err(anyhow::Error::from),
            Backend::Userspace { .. } => self
                .backend
                .api()
                .remove_interface()
                .map_err(anyhow::Error::from),
        };
        if let Err(error) = removed {
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

/// A peer for one node under `key`: the node itself, or (`standby`) its next
/// key, which may answer the node's handshake but carries nothing yet. A
/// standby peer has no endpoint either, so this side never starts a
/// handshake with a key the node does not use yet; the node's first
/// handshake with it brings the endpoint.
fn peer(node: &WireGuardPeer, key: [u8; 32], standby: bool) -> Peer {
    let mut peer = Peer::new(Key::new(key));
    if !standby {
        peer.endpoint = Some(node.endpoint);
        peer.allowed_ips = node
            .allowed_ips
            .iter()
            .map(|prefix| IpAddrMask::new(prefix.addr(), prefix.prefix_len()))
            .collect();
    }
    peer
}

/// Sends an empty datagram (to the discard port) through the tunnel to
/// `node`'s first prefix: WireGuard starts a handshake with the node when it
/// has no session to carry it.
fn nudge(node: &WireGuardPeer) {
    let Some(prefix) = node.allowed_ips.first() else {
        return;
    };
    let target = std::net::SocketAddr::new(prefix.addr(), 9);
    let local: std::net::SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sent = std::net::UdpSocket::bind(local).and_then(|socket| socket.send_to(&[], target));
    if let Err(error) = sent {
        warn!(node = %node.name, %error, "starting a WireGuard handshake");
    }
}

/// Refuses node lists that would hijack this host's routing.
fn check_nodes(nodes: &[WireGuardPeer]) -> anyhow::Result<()> {
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
        if let Some(next) = &node.next_public_key
            && !keys.insert(next.0)
        {
            bail!(
                "[[nodes]] {:?}: its next_public_key is its own or another node's key",
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
    let threads = config.userspace_threads.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, |cpus| cpus.get() / 2)
                .clamp(1, 4)
        },
        std::num::NonZeroUsize::get,
    );
    let device = start_userspace_device(&config.interface, threads)
        .with_context(|| format!("the kernel has no WireGuard: {kernel_error}"))?;
    let userspace = WGApi::<Userspace>::new(config.interface.clone())?;
    Ok((
        Backend::Userspace {
            api: userspace,
            _device: device,
        },
        format!(
            "the kernel has no WireGuard ({kernel_error}); userspace fallback, {threads} thread(s)"
        ),
    ))
}

/// Starts boringtun with `threads` workers on a new interface `name` and
/// sets it up.
///
/// All peers share the one listening socket (`use_connected_socket` off):
/// by default boringtun gives each peer a UDP socket connected to its
/// endpoint, and a node's next key — a second peer of the same node — would
/// then never see that node's first handshake with it, which the old peer's
/// socket takes and refuses. Started on a thread of its own: boringtun blocks
/// SIGTERM and SIGINT in the thread that creates the device (and the threads
/// it starts) to read them from a signalfd; palisaded's threads keep them
/// unblocked, so that palisaded, not the tunnel, owns shutdown.
fn start_userspace_device(name: &str, threads: usize) -> anyhow::Result<DeviceHandle> {
    let config = DeviceConfig {
        use_connected_socket: false,
        n_threads: threads,
        ..DeviceConfig::default()
    };
    let interface = name.to_owned();
    let device = std::thread::spawn(move || DeviceHandle::new(&interface, config))
        .join()
        .map_err(|_| {
            anyhow::anyhow!("the thread creating the userspace WireGuard device panicked")
        })?
        .with_context(|| format!("creating userspace WireGuard interface {name}"))?;
    crate::link::set_up(name).with_context(|| format!("setting {name} up"))?;
    Ok(device)
}

/// Writes `key` to `path` with mode 0600, atomically.
fn save_key(path: &Path, key: &Key) -> anyhow::Result<()> {
    write_atomically(path, &format!("{key}\n"), 0o600)
}

/// Writes the public key beside the private one (`wireguard.pub` for
/// `wireguard.key`), for the other nodes' configuration.
fn publish_public_key(private_key_file: &Path, public_key: &Key) -> anyhow::Result<()> {
    publish(&private_key_file.with_extension("pub"), public_key)
}

/// Writes a public key to `path`.
fn publish(path: &Path, public_key: &Key) -> anyhow::Result<()> {
    std::fs::write(path, format!("{public_key}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Where the staged private key is kept (`wireguard.key.next`).
fn staged_key_file(private_key_file: &Path) -> PathBuf {
    let mut name = private_key_file.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// Where the staged public key is published (`wireguard.pub.next`).
fn staged_public_key_file(private_key_file: &Path) -> PathBuf {
    private_key_file.with_extension("pub.next")
}

/// The staged private key, if `rotate-key --stage` left one.
fn load_staged_key(private_key_file: &Path) -> anyhow::Result<Option<Key>> {
    let path = staged_key_file(private_key_file);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<Key>().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "{}: not a WireGuard private key; remove it to drop the staged rotation",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
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

    fn node(name: &str, endpoint: &str, allowed: &[&str], key: u8) -> WireGuardPeer {
        WireGuardPeer {
            name: name.to_owned(),
            endpoint: endpoint.parse().unwrap(),
            public_key: WireGuardKey([key; 32]),
            next_public_key: None,
            allowed_ips: allowed.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    fn state(nodes: Vec<WireGuardPeer>) -> TunnelState {
        TunnelState {
            private_key: Key::new([9; 32]),
            staged_key: None,
            nodes,
            promoted: BTreeMap::new(),
        }
    }

    /// (key's first byte, number of allowed IPs) per peer.
    fn shape(state: &TunnelState) -> Vec<(u8, usize)> {
        state
            .peers()
            .iter()
            .map(|peer| (peer.public_key.as_array()[0], peer.allowed_ips.len()))
            .collect()
    }

    #[test]
    fn a_next_key_is_a_standby_peer_until_it_handshakes_then_takes_the_prefixes() {
        let mut b = node("b", "192.0.2.2:51871", &["10.1.0.0/16", "10.9.0.2/32"], 1);
        b.next_public_key = Some(WireGuardKey([7; 32]));
        let mut state = state(vec![b.clone()]);
        assert_eq!(
            shape(&state),
            [(1, 2), (7, 0)],
            "old key routes, next waits"
        );
        state.promoted.insert("b".to_owned(), [7; 32]);
        assert_eq!(shape(&state), [(7, 2)], "promoted: the old key is gone");
        // The configuration catching up (next key as public_key) changes nothing.
        let mut caught_up = b.clone();
        caught_up.public_key = WireGuardKey([7; 32]);
        caught_up.next_public_key = None;
        state.nodes = vec![caught_up];
        state.promoted.clear();
        assert_eq!(shape(&state), [(7, 2)]);
        // A promotion recorded for another next key does not apply.
        state.nodes = vec![b];
        state.promoted.insert("b".to_owned(), [8; 32]);
        assert_eq!(shape(&state), [(1, 2), (7, 0)]);
    }

    #[test]
    fn a_next_key_must_be_new() {
        let mut b = node("b", "192.0.2.2:51871", &["10.1.0.0/16"], 1);
        b.next_public_key = Some(WireGuardKey([1; 32]));
        let own = check_nodes(&[b.clone()]);
        assert!(format!("{own:?}").contains("next_public_key"), "{own:?}");
        b.next_public_key = Some(WireGuardKey([2; 32]));
        let c = node("c", "192.0.2.3:51871", &["10.2.0.0/16"], 2);
        let others = check_nodes(&[c, b.clone()]);
        assert!(
            format!("{others:?}").contains("next_public_key"),
            "{others:?}"
        );
        b.next_public_key = Some(WireGuardKey([3; 32]));
        assert!(check_nodes(&[b]).is_ok());
    }

    #[test]
    fn a_staged_key_sits_beside_the_key_file() {
        let key_file = Path::new("/var/lib/palisade/wireguard.key");
        assert_eq!(
            staged_key_file(key_file),
            Path::new("/var/lib/palisade/wireguard.key.next")
        );
        assert_eq!(
            staged_public_key_file(key_file),
            Path::new("/var/lib/palisade/wireguard.pub.next")
        );
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
