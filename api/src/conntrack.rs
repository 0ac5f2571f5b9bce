//! The connection-tracking table as the control socket shows it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::TrafficDirection;

/// One tracked connection (`GET /v1/conntrack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackEntry {
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or the protocol number.
    pub protocol: String,
    /// Address of the side that opened the connection.
    pub source: IpAddr,
    /// Address of the other side.
    pub destination: IpAddr,
    /// Source port (ICMP echo: the identifier; 0 without ports).
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
    /// `INGRESS` when a peer opened it, `EGRESS` when this node did.
    pub direction: TrafficDirection,
    /// How far the connection got.
    pub state: ConnectionState,
    /// Seconds until the entry expires unless traffic refreshes it.
    pub expires_in_seconds: u64,
    /// The rule that let it open, as `policy spec.path`; `failsafe` or
    /// `default` when no rule did.
    pub opened_by: String,
}

/// A tracked connection's state: TCP's as far as tracked; other protocols
/// are `ESTABLISHED` once any reply was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    /// Opened, no reply seen yet.
    Opening,
    /// Replies seen.
    Established,
    /// A FIN or RST seen.
    Closing,
}

impl ConnectionState {
    /// The name on the wire: `OPENING`, `ESTABLISHED`, `CLOSING`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opening => "OPENING",
            Self::Established => "ESTABLISHED",
            Self::Closing => "CLOSING",
        }
    }
}

/// A page of the table (`GET /v1/conntrack?limit=N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackList {
    /// Up to `limit` tracked connections, sorted.
    pub entries: Vec<ConntrackEntry>,
    /// Connections tracked in all.
    pub total: usize,
    /// Whether `entries` holds fewer than `total`.
    pub truncated: bool,
}

/// Entries `GET /v1/conntrack` returns unless asked for fewer.
pub const CONNTRACK_DEFAULT_LIMIT: usize = 10_000;
/// Entries one request may ask for at most.
pub const CONNTRACK_MAX_LIMIT: usize = 50_000;

/// What `DELETE /v1/conntrack` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackFlush {
    /// Entries removed.
    pub removed: usize,
}
