//! Datapath backends: what installs a compiled rule table into the kernel.
//! [`open`] is the one place a backend is chosen; everything above talks to
//! the [`Datapath`] trait, and only `ebpf` names aya's types.

#[cfg(test)]
mod differential;
pub mod ebpf;

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use palisade_api::{Counters, InterfaceStatus, KernelFeatures, PacketCount};
use palisade_common::FlowEvent;
use palisade_policy::{CompiledTable, Direction};

use crate::config::{Config, CtFullAction, CtTimeoutsConfig, DatapathConfig, Service};

/// How full one connection-tracking table is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFill {
    /// `tcp` or `other`.
    pub table: &'static str,
    /// Entries of connections that have not expired.
    pub entries: usize,
    /// Entries it holds at most (`datapath.ct_tcp_max`, `ct_any_max`).
    pub capacity: usize,
    /// About how many entries it holds before the kernel starts evicting
    /// the least recently used ones: the capacity less the free entries
    /// the kernel's LRU keeps aside for each CPU.
    pub evicting_from: usize,
}

/// Free entries a kernel LRU hash map keeps aside per CPU
/// (`LOCAL_FREE_TARGET` in kernel/bpf/bpf_lru_list.h).
pub const LRU_FREE_PER_CPU: usize = 128;

/// About how many entries an LRU table of `capacity` holds on `cpus` CPUs
/// before it evicts (at least half the capacity).
pub fn lru_evicting_from(capacity: usize, cpus: usize) -> usize {
    capacity
        .saturating_sub(LRU_FREE_PER_CPU.saturating_mul(cpus))
        .max(capacity / 2)
}

/// Reads the connection tables on handles of its own, so a walk of up to
/// their capacity (hundreds of thousands of entries) never holds the engine.
pub trait ConnectionTables: Send {
    /// The fill of each connection table.
    ///
    /// # Errors
    ///
    /// When a table cannot be read.
    fn count(&self) -> anyhow::Result<Vec<TableFill>>;

    /// Up to `limit` tracked connections that have not expired, and how
    /// many there are in all.
    ///
    /// # Errors
    ///
    /// When a table cannot be read.
    fn list(&self, limit: usize) -> anyhow::Result<(Vec<TrackedConnection>, usize)>;
}

/// Why a backend refused a table; the table in force stays.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The table is larger than the backend was sized for: the policies'
    /// doing, not the kernel's (the control socket answers 422).
    #[error("{0}")]
    Capacity(String),
    /// The kernel refused an update.
    #[error(transparent)]
    Kernel(#[from] anyhow::Error),
}

/// What [`Datapath::repair`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// An enforced interface is gone: nothing is enforced on it until it
    /// comes back.
    Vanished {
        /// Its name.
        interface: String,
    },
    /// An interface of a configured name appeared (again) and is enforced.
    Reattached {
        /// Its name.
        interface: String,
        /// Its index before (0: never attached).
        previous_ifindex: u32,
        /// Its index now.
        ifindex: u32,
    },
    /// The pins of an interface's links were removed while palisaded ran;
    /// the links stayed attached (palisaded holds them) and are pinned again.
    Repinned {
        /// Its name.
        interface: String,
    },
    /// palisade's cls_bpf filter was deleted from an interface while
    /// palisaded ran (`tc filter del`, `tc qdisc del ... clsact`); it is put
    /// back.
    Restored {
        /// Its name.
        interface: String,
    },
    /// Something could not be mended (empty interface: the pinned state).
    Failed {
        /// The interface.
        interface: String,
        /// Why.
        error: String,
    },
}

/// What a backend enforces besides the compiled rule table, as the
/// configuration says: it may change on reload, and
/// [`Datapath::stage`] hands it over so that the next
/// [`Datapath::install`] puts it in force together with its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcementSettings {
    /// Services new connections reach whatever the policies say, inbound.
    pub failsafe_inbound: Vec<Service>,
    /// The same, outbound.
    pub failsafe_outbound: Vec<Service>,
    /// Source prefixes always dropped first on ingress (`datapath.prefilter`).
    pub prefilter: Vec<ipnet::IpNet>,
    /// One forwarded new connection in N is reported (`flows.forward_sample_rate`).
    pub forward_sample_rate: u32,
    /// Flow events per second and CPU at most (`flows.events_per_second`).
    pub events_per_second: u32,
    /// Connection-tracking timeouts.
    pub ct_timeouts: CtTimeoutsConfig,
    /// What a full connection table does to a new connection.
    pub ct_full: CtFullAction,
}

impl EnforcementSettings {
    /// The settings `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        Self {
            failsafe_inbound: config.failsafe.inbound.clone(),
            failsafe_outbound: config.failsafe.outbound.clone(),
            prefilter: config.datapath.prefilter.clone(),
            forward_sample_rate: config.flows.forward_sample_rate,
            events_per_second: config.flows.events_per_second,
            ct_timeouts: config.datapath.ct_timeouts,
            ct_full: config.datapath.ct_full,
        }
    }
}

/// The backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatapathKind {
    /// TC and XDP programs (the only one today; nftables is to come).
    Ebpf,
}

/// Where a backend delivers the flow events it reads from the kernel (the
/// daemon's flow buffer).
pub trait FlowSink: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: &FlowEvent);
}

/// Opens backend `kind` as `config` sizes it, its programs loaded but
/// attached nowhere yet (see [`Datapath::attach`]); it hands its flow
/// events to `sink` from a task of its own.
///
/// # Errors
///
/// When the backend cannot load (permissions, kernel, pinned state).
pub fn open(
    kind: DatapathKind,
    config: &Config,
    sink: Arc<dyn FlowSink>,
) -> anyhow::Result<Box<dyn Datapath>> {
    match kind {
        DatapathKind::Ebpf => {
            let (datapath, events) = ebpf::EbpfDatapath::load(config)?;
            tokio::spawn(ebpf::events::read_events(events, sink));
            Ok(Box::new(datapath))
        }
    }
}

/// Removes everything backend `kind` left in the kernel under `config`
/// (pinned programs and state): enforcement stops. Returns whether there
/// was anything.
///
/// # Errors
///
/// When something cannot be removed.
pub fn cleanup(kind: DatapathKind, pin_path: &Path) -> anyhow::Result<bool> {
    match kind {
        DatapathKind::Ebpf => ebpf::pinning::cleanup(pin_path),
    }
}

/// Whether backend `kind` has state of an earlier run under `pin_path`.
pub fn has_state(kind: DatapathKind, pin_path: &Path) -> bool {
    match kind {
        DatapathKind::Ebpf => {
            std::fs::read_dir(pin_path).is_ok_and(|mut entries| entries.next().is_some())
        }
    }
}

/// How full one datapath table is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapUsage {
    /// The table's name, such as `ingress_prefixes`.
    pub map: &'static str,
    /// Entries in use by the table in force.
    pub entries: usize,
    /// Entries it can hold.
    pub capacity: usize,
}

/// How far a tracked connection has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opened, no reply seen yet.
    Opening,
    /// A reply was seen.
    Established,
    /// TCP: FIN both ways or RST; expires soon.
    Closing,
}

/// One entry of the backend's connection-tracking table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedConnection {
    /// IP protocol number.
    pub protocol: u8,
    /// The side that opened it.
    pub source: IpAddr,
    /// The other side.
    pub destination: IpAddr,
    /// Source port (ICMP echo: the identifier).
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
    /// The direction of the packet that opened it.
    pub direction: Direction,
    /// How far it has got.
    pub state: ConnectionState,
    /// Time left before it expires unless refreshed.
    pub expires_in: Duration,
    /// The rule that let it open, in the table in force when it opened
    /// (`NO_RULE`, `FAILSAFE_RULE`).
    pub rule_id: u32,
}

/// A backend that enforces compiled rule tables.
pub trait Datapath: Send {
    /// Short name shown in status, such as `ebpf`.
    fn name(&self) -> &'static str;

    /// What the running kernel offers this backend (read once, at start).
    fn kernel_features(&self) -> KernelFeatures;

    /// Sets what the next [`Datapath::install`] enforces besides its table;
    /// nothing changes in the kernel until then.
    ///
    /// # Errors
    ///
    /// When the backend cannot enforce a setting; nothing was staged then.
    fn stage(&mut self, settings: &EnforcementSettings) -> anyhow::Result<()>;

    /// Makes `table`, with the settings staged last, the one in force,
    /// atomically: packets see either the old table and settings or the new
    /// ones, never a mix. On error the old table stays in force.
    ///
    /// # Errors
    ///
    /// [`DatapathError`]: a table too large for the backend, or an update
    /// the kernel refused; nothing changed then.
    fn install(&mut self, table: &CompiledTable, generation: u32) -> Result<(), DatapathError>;

    /// Starts enforcing on the configured interfaces. Called once, after the
    /// first [`Datapath::install`], so no packet meets an empty table.
    ///
    /// # Errors
    ///
    /// When an interface is missing or refuses the attachment.
    fn attach(&mut self, config: &DatapathConfig) -> anyhow::Result<()>;

    /// The configured interfaces and whether each is enforced on.
    fn interfaces(&self) -> Vec<InterfaceStatus>;

    /// Checks the attachments against the kernel and mends what it can: an
    /// interface that came back (a NIC reset, a veth or VLAN re-created) is
    /// attached anew, pins removed under a running palisaded are put back.
    /// Returns what it found; empty when all is in order.
    fn repair(&mut self) -> Vec<Repair>;

    /// How full each of the backend's tables is.
    fn map_usage(&self) -> Vec<MapUsage>;

    /// Packet counters since load.
    ///
    /// # Errors
    ///
    /// When the counters cannot be read.
    fn counters(&self) -> anyhow::Result<Counters>;

    /// Packets and bytes of the new connections each rule of the table in
    /// force decided, indexed by rule id.
    ///
    /// # Errors
    ///
    /// When the counters cannot be read.
    fn rule_counters(&self) -> anyhow::Result<Vec<PacketCount>>;

    /// The connection tables on handles of their own, for a task or a
    /// request that reads them without the engine.
    ///
    /// # Errors
    ///
    /// When the tables cannot be opened.
    fn connection_tables(&self) -> anyhow::Result<Box<dyn ConnectionTables>>;

    /// Forgets every tracked connection (their next packets are judged as
    /// new connections) and returns how many there were.
    ///
    /// # Errors
    ///
    /// When the table cannot be read or an entry cannot be removed.
    fn flush_connections(&mut self) -> anyhow::Result<usize>;
}
