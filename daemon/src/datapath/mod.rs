//! Datapath backends: what installs a compiled rule table into the kernel.

pub mod conntrack;
pub mod ebpf;
pub mod pinning;
pub mod test_packet;

use std::{net::IpAddr, time::Duration};

use palisade_api::{Counters, InterfaceStatus, PacketCount};
use palisade_policy::{CompiledTable, Direction};

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

    /// The tracked connections that have not expired.
    ///
    /// # Errors
    ///
    /// When the table cannot be read.
    fn connections(&self) -> anyhow::Result<Vec<TrackedConnection>>;

    /// Forgets every tracked connection (their next packets are judged as
    /// new connections) and returns how many there were.
    ///
    /// # Errors
    ///
    /// When the table cannot be read or an entry cannot be removed.
    fn flush_connections(&mut self) -> anyhow::Result<usize>;
}

#[cfg(test)]
mod differential_tests;
