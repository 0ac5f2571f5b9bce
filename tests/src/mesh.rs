//! A two-node WireGuard mesh in namespaces, for the WireGuard tests and the
//! WireGuard benchmark: two namespaces joined by a veth pair (192.0.2.1 and
//! .2), each with an address of its "pod" prefix on loopback, and ways to
//! join them with palisaded or with stock wireguard-go.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{ChildGuard, Daemon, Netns, run};

/// Where userspace WireGuard implementations put their UAPI sockets.
pub const UAPI_DIRECTORY: &str = "/var/run/wireguard";

/// The WireGuard port every node listens on.
pub const PORT: u16 = 51871;

/// Where each palisaded of the mesh serves `/metrics`, inside its namespace.
pub const METRICS: &str = "127.0.0.1:9964";

/// One node of the mesh.
#[derive(Debug)]
pub struct Node {
    /// Its namespace.
    pub netns: Netns,
    /// Its address on the veth (the tunnel's endpoint).
    pub underlay: &'static str,
    /// The address of its pods (on loopback).
    pub pod_address: &'static str,
    /// Its pod prefix, routed to it through the tunnel.
    pub pod_prefix: &'static str,
}

impl Node {
    /// Whether one ping from this node's pods reaches `to`'s pods.
    pub fn pings(&self, to: &Node) -> bool {
        self.netns
            .command("ping")
            .args(["-c", "1", "-W", "1", "-I", self.pod_address, to.pod_address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Waits up to 15 s for a ping to `to` to pass.
    ///
    /// # Errors
    ///
    /// When none passed in time.
    pub fn wait_for_ping(&self, to: &Node) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.pings(to) {
            if Instant::now() > deadline {
                bail!(
                    "no ping from {} to {} through the tunnel",
                    self.pod_address,
                    to.pod_address
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

/// The two nodes, joined by a veth pair.
///
/// # Errors
///
/// When a namespace, link or address cannot be made.
pub fn nodes() -> anyhow::Result<(Node, Node)> {
    let a = Node {
        netns: Netns::new("wga")?,
        underlay: "192.0.2.1",
        pod_address: "10.99.1.1",
        pod_prefix: "10.99.1.0/24",
    };
    let b = Node {
        netns: Netns::new("wgb")?,
        underlay: "192.0.2.2",
        pod_address: "10.99.2.1",
        pod_prefix: "10.99.2.0/24",
    };
    a.netns.add_veth_to(&b.netns)?;
    for node in [&a, &b] {
        node.netns.ip(&[
            "addr",
            "add",
            &format!("{}/24", node.underlay),
            "dev",
            "eth0",
        ])?;
        node.netns.ip(&["link", "set", "eth0", "up"])?;
        node.netns.ip(&[
            "addr",
            "add",
            &format!("{}/32", node.pod_address),
            "dev",
            "lo",
        ])?;
    }
    Ok((a, b))
}

/// A fresh key pair from `wg genkey | wg pubkey`: (private, public).
///
/// # Errors
///
/// When wg is missing or fails.
pub fn key_pair() -> anyhow::Result<(String, String)> {
    use std::io::Write as _;
    let private = run(Command::new("wg").arg("genkey"))?;
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running wg pubkey")?;
    pubkey
        .stdin
        .take()
        .context("wg pubkey's stdin")?
        .write_all(private.as_bytes())?;
    let public = pubkey.wait_with_output()?;
    Ok((
        private.trim().to_owned(),
        String::from_utf8_lossy(&public.stdout).trim().to_owned(),
    ))
}

/// A tunnel interface name: interface names are global to the UAPI socket
/// directory, so unique per process and call (and at most 15 bytes).
pub fn interface(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("pwg{}{n}{role}", std::process::id() % 100_000)
}

/// Starts palisaded on `node` with `private` as its key and `peer` as its
/// one other node (named `peer`), with its files in `dir`.
///
/// # Errors
///
/// When the files cannot be written or palisaded does not come up.
pub fn start_palisade(
    node: &Node,
    interface: &str,
    private: &str,
    peer: &Node,
    peer_public: &str,
    dir: &Path,
) -> anyhow::Result<Daemon> {
    start_palisade_with(node, interface, private, peer, peer_public, dir, false)
}

/// [`start_palisade`], in WireGuard strict mode when `strict`.
///
/// # Errors
///
/// When the files cannot be written or palisaded does not come up.
pub fn start_palisade_with(
    node: &Node,
    interface: &str,
    private: &str,
    peer: &Node,
    peer_public: &str,
    dir: &Path,
    strict: bool,
) -> anyhow::Result<Daemon> {
    std::fs::create_dir_all(dir)?;
    let policies = dir.join("policies.d");
    std::fs::create_dir_all(&policies)?;
    let key_file = dir.join("wireguard.key");
    std::fs::write(&key_file, format!("{private}\n"))?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[datapath]\ninterfaces = [\"eth0\"]\n\n[metrics]\nlisten = \"{METRICS}\"\n\n[encryption]\nmode = \"wireguard\"\n\n[wireguard]\ninterface = \"{interface}\"\nprivate_key_file = \"{}\"\nstrict = {strict}\n\n[[nodes]]\nname = \"peer\"\npod_cidrs = [\"{}\"]\n[nodes.wireguard]\nendpoint = \"{}:{PORT}\"\npublic_key = \"{peer_public}\"\n",
            key_file.display(),
            peer.pod_prefix,
            peer.underlay
        ),
    )?;
    Daemon::start(&node.netns, &config, &policies, dir)
}

/// Two nodes joined by palisaded's tunnel.
#[derive(Debug)]
pub struct PalisadePair {
    /// Node A (192.0.2.1, pods 10.99.1.0/24).
    pub a: Node,
    /// Node B (192.0.2.2, pods 10.99.2.0/24).
    pub b: Node,
    /// palisaded on A.
    pub a_daemon: Daemon,
    /// palisaded on B.
    pub b_daemon: Daemon,
    /// A's key pair (private, public).
    pub a_keys: (String, String),
    /// B's key pair (private, public).
    pub b_keys: (String, String),
    /// A's tunnel interface.
    pub a_interface: String,
    /// B's tunnel interface.
    pub b_interface: String,
}

impl PalisadePair {
    /// Makes the nodes and starts palisaded on both, with their files in
    /// `dir/a` and `dir/b`; A in strict mode when `a_strict`.
    ///
    /// # Errors
    ///
    /// When a node, a key or a daemon cannot be made.
    pub fn start(dir: &Path, a_strict: bool) -> anyhow::Result<Self> {
        let (a, b) = nodes()?;
        let (a_keys, b_keys) = (key_pair()?, key_pair()?);
        let (a_interface, b_interface) = (interface("a"), interface("b"));
        let a_daemon = start_palisade_with(
            &a,
            &a_interface,
            &a_keys.0,
            &b,
            &b_keys.1,
            &dir.join("a"),
            a_strict,
        )?;
        let b_daemon = start_palisade(&b, &b_interface, &b_keys.0, &a, &a_keys.1, &dir.join("b"))?;
        Ok(Self {
            a,
            b,
            a_daemon,
            b_daemon,
            a_keys,
            b_keys,
            a_interface,
            b_interface,
        })
    }

    /// Both daemons' logs.
    pub fn logs(&self) -> String {
        format!("A:\n{}\nB:\n{}", self.a_daemon.log(), self.b_daemon.log())
    }
}

/// Stock wireguard-go on `node`, configured with `wg` and `ip` as an
/// operator would; stopped (and its socket removed) on drop.
#[derive(Debug)]
pub struct WireGuardGo {
    process: ChildGuard,
    socket: PathBuf,
}

impl WireGuardGo {
    /// Starts wireguard-go as `interface` on `node` with `private` as its
    /// key and `peer` (public key `peer_public`) as its one peer.
    ///
    /// # Errors
    ///
    /// When wireguard-go does not start or cannot be configured.
    pub fn start(
        node: &Node,
        interface: &str,
        private: &str,
        peer: &Node,
        peer_public: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let child = node
            .netns
            .command("wireguard-go")
            .args(["-f", interface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wireguard-go")?;
        let go = Self {
            process: ChildGuard::new(child),
            socket: Path::new(UAPI_DIRECTORY).join(format!("{interface}.sock")),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !go.socket.exists() {
            if Instant::now() > deadline {
                bail!("wireguard-go did not start");
            }
            thread::sleep(Duration::from_millis(50));
        }
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join(format!("{interface}.key"));
        std::fs::write(&key_file, format!("{private}\n"))?;
        run(node.netns.command("wg").args([
            "set",
            interface,
            "private-key",
            &key_file.display().to_string(),
            "listen-port",
            &PORT.to_string(),
            "peer",
            peer_public,
            "endpoint",
            &format!("{}:{PORT}", peer.underlay),
            "allowed-ips",
            peer.pod_prefix,
        ]))?;
        node.netns.ip(&["link", "set", interface, "up"])?;
        node.netns
            .ip(&["route", "add", peer.pod_prefix, "dev", interface])?;
        Ok(go)
    }
}

impl Drop for WireGuardGo {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}
