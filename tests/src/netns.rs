//! Network namespaces and the three-host test topology.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

use crate::{
    host::run,
    traffic::{Connect, tcp_connect},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for `ip netns`.
pub(crate) fn unique(role: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("pal{}-{id}-{role}", std::process::id())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after `role`, with loopback up.
    ///
    /// # Errors
    ///
    /// When `ip netns add` fails.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = unique(role);
        ip(&["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`.
    ///
    /// # Errors
    ///
    /// When the command fails.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Joins this namespace to `peer` by a veth pair named `eth0` on both
    /// sides. Created inside this namespace with its peer inside the other:
    /// the veth never exists in the root namespace.
    ///
    /// # Errors
    ///
    /// When `ip link add` fails.
    pub fn add_veth_to(&self, peer: &Netns) -> anyhow::Result<()> {
        self.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ])?;
        Ok(())
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread that has entered this namespace.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<JoinHandle<T>> {
        let file = File::open(Path::new("/run/netns").join(&self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        // The thread enters the namespace before running f; only that thread moves.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            let entered = setns(&file, CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = entered_tx.send(entered);
            assert!(ok, "setns failed");
            f()
        });
        entered_rx
            .recv()
            .context("namespace thread died")?
            .with_context(|| format!("entering namespace {}", self.name))?;
        Ok(handle)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete namespace {}: {error:#}",
                self.name
            );
        }
    }
}

/// Whether a namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// A test's literal address.
///
/// # Panics
///
/// When `text` is not an IP address (a bug in the test).
pub fn address(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// Two namespaces joined by a veth pair: a `node` (the firewall's host) and a
/// `client` with one address inside and one outside the example bastion
/// network. Both ends are called `eth0`, as in the example config.
#[derive(Debug)]
pub struct Topology {
    /// Where palisaded runs.
    pub node: Netns,
    /// Where traffic comes from.
    pub client: Netns,
}

impl Topology {
    /// The node's address.
    pub const NODE: &'static str = "10.200.0.1";
    /// A client address inside the example policy's bastion network 10.200.0.8/29.
    pub const BASTION: &'static str = "10.200.0.10";
    /// A client address outside the bastion network.
    pub const OUTSIDER: &'static str = "10.200.0.100";

    /// Port `port` on the node's address.
    pub fn node_port(port: u16) -> SocketAddr {
        SocketAddr::new(address(Self::NODE), port)
    }

    /// Creates both namespaces and the veth pair between them.
    ///
    /// # Errors
    ///
    /// When any `ip` command fails (everything made so far is removed).
    pub fn new() -> anyhow::Result<Self> {
        let topology = Self {
            node: Netns::new("node")?,
            client: Netns::new("client")?,
        };
        topology.join()?;
        Ok(topology)
    }

    /// A TCP connection attempt from `source` (a client address) to the
    /// node's port 22, given 700 ms (long enough for a SYN-ACK on a veth;
    /// a dropped SYN waits that long).
    ///
    /// # Panics
    ///
    /// When the client namespace cannot be entered.
    pub fn ssh_from(&self, source: &str) -> Connect {
        tcp_connect(
            &self.client,
            address(source),
            Self::node_port(22),
            Duration::from_millis(700),
        )
        .expect("connect attempt")
    }

    /// Makes the veth pair between the namespaces with its addresses, up;
    /// again after `ip link del eth0` (a NIC reset, a veth re-created).
    ///
    /// # Errors
    ///
    /// When any `ip` command fails.
    pub fn join(&self) -> anyhow::Result<()> {
        self.node.add_veth_to(&self.client)?;
        self.node
            .ip(&["addr", "add", &format!("{}/24", Self::NODE), "dev", "eth0"])?;
        for address in [Self::BASTION, Self::OUTSIDER] {
            self.client
                .ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        }
        self.node.ip(&["link", "set", "eth0", "up"])?;
        self.client.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }
}
