//! Datapath backends: what installs a compiled rule table into the kernel.

pub mod ebpf;
pub mod pinning;
pub mod test_packet;

use palisade_api::{Counters, InterfaceStatus, PacketCount};
use palisade_policy::CompiledTable;

use crate::config::DatapathConfig;

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

/// A backend that enforces compiled rule tables.
pub trait Datapath: Send {
    /// Short name shown in status, such as `ebpf`.
    fn name(&self) -> &'static str;

    /// Makes `table` the one in force, atomically: packets see either the old
    /// table or the new one, never a mix. On error the old table stays in force.
    ///
    /// # Errors
    ///
    /// When the kernel refuses an update; nothing changed then.
    fn install(&mut self, table: &CompiledTable, generation: u32) -> anyhow::Result<()>;

    /// Starts enforcing on the configured interfaces. Called once, after the
    /// first [`Datapath::install`], so no packet meets an empty table.
    ///
    /// # Errors
    ///
    /// When an interface is missing or refuses the attachment.
    fn attach(&mut self, config: &DatapathConfig) -> anyhow::Result<()>;

    /// The interfaces enforced on.
    fn interfaces(&self) -> Vec<InterfaceStatus>;

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
}

#[cfg(test)]
mod differential_tests;
