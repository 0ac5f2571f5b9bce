//! Types shared by palisade's eBPF programs and userspace: map keys and values,
//! the flow event record, and the verdict and drop-reason codes.
//!
//! Everything here is `#[repr(C)]` and padded explicitly, because the kernel and
//! userspace must agree on the byte layout.
#![no_std]

/// Name of the XDP ingress program inside the eBPF object.
pub const XDP_INGRESS_PROGRAM: &str = "palisade_xdp_ingress";
/// Name of the map that holds the index (0 or 1) of the live table slot.
pub const ACTIVE_SLOT_MAP: &str = "ACTIVE_SLOT";
/// Name of the map that holds one [`SlotSettings`] per table slot.
pub const SLOT_SETTINGS_MAP: &str = "SLOT_SETTINGS";
/// Names of the per-slot LPM tries from source prefix to rule-set index.
pub const INGRESS_PREFIX_MAPS: [&str; 2] = ["INGRESS_PREFIXES_0", "INGRESS_PREFIXES_1"];
/// Names of the per-slot arrays of [`RuleSet`]s.
pub const INGRESS_RULE_SET_MAPS: [&str; 2] = ["INGRESS_RULE_SETS_0", "INGRESS_RULE_SETS_1"];
/// Name of the ring buffer carrying [`FlowEvent`]s to userspace.
pub const FLOW_EVENTS_MAP: &str = "FLOW_EVENTS";
/// Name of the per-CPU array of [`Counter`] values.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Number of table slots: one live, one being written.
pub const SLOT_COUNT: u32 = 2;
/// Most port entries one rule set can hold (the eBPF side scans them in order).
pub const MAX_ENTRIES_PER_RULE_SET: usize = 32;
/// Default capacity of each prefix trie.
pub const DEFAULT_PREFIX_CAPACITY: u32 = 65_536;
/// Default capacity of each rule-set array.
pub const DEFAULT_RULE_SET_CAPACITY: u32 = 1_024;
/// Default size of the flow-event ring buffer in bytes.
pub const FLOW_RING_BYTES: u32 = 256 * 1024;
/// Rule id carried by a verdict no rule decided (default deny, default allow).
pub const NO_RULE: u32 = u32::MAX;

/// Address bytes as stored in maps and events: IPv6, with IPv4 written as an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) so one trie serves both families.
pub type Address = [u8; 16];
/// Prefix length offset of IPv4-mapped addresses inside an [`Address`].
pub const IPV4_MAPPED_PREFIX_LEN: u32 = 96;

/// Verdict codes, numbered as Hubble's `flow.Verdict` so flows read the same.
pub mod verdict {
    /// The packet was let through.
    pub const FORWARDED: u8 = 1;
    /// The packet was dropped.
    pub const DROPPED: u8 = 2;
    /// The packet would have been dropped but audit mode let it through.
    pub const AUDIT: u8 = 4;
}

/// Drop reasons, numbered as Cilium's `flow.DropReason` where one exists.
pub mod drop_reason {
    /// Not dropped.
    pub const NONE: u8 = 0;
    /// No allow rule matched in a default-deny direction (Cilium `POLICY_DENIED`).
    pub const POLICY_DENIED: u8 = 133;
    /// An explicit deny rule matched (Cilium `POLICY_DENY`).
    pub const POLICY_DENY: u8 = 181;
}

/// Rule-set entry actions.
pub mod action {
    /// Let the packet through.
    pub const ALLOW: u8 = 1;
    /// Drop the packet.
    pub const DENY: u8 = 2;
}

/// Traffic directions, numbered as Hubble's `flow.TrafficDirection`.
pub mod direction {
    /// Towards this node.
    pub const INGRESS: u8 = 1;
    /// Away from this node.
    pub const EGRESS: u8 = 2;
}

/// IP protocol numbers used by rule entries, plus the two wildcards [`protocol::ANY`]
/// (TCP, UDP or SCTP) and [`protocol::ALL`] (every protocol).
pub mod protocol {
    /// Wildcard: TCP, UDP or SCTP, as Cilium's `ANY`.
    pub const ANY: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// Every IP protocol: what an L3-only rule (no `toPorts`) allows or denies.
    pub const ALL: u8 = 255;
}

/// Indices into the per-CPU [`COUNTERS_MAP`]: one per outcome.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Judged packets forwarded.
    Forwarded = 0,
    /// Dropped: no allow rule in a default-deny direction.
    DroppedPolicyDenied = 1,
    /// Dropped: a deny rule matched.
    DroppedPolicyDeny = 2,
    /// Would have been dropped (no allow rule); forwarded in audit mode.
    AuditedPolicyDenied = 3,
    /// Would have been dropped (deny rule); forwarded in audit mode.
    AuditedPolicyDeny = 4,
    /// Flow events lost because the ring buffer was full (`packets` counts them).
    EventsLost = 5,
}

/// Number of [`Counter`] slots.
pub const COUNTER_COUNT: u32 = 6;

/// One counter slot: packets and their bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    /// Packets (or, for [`Counter::EventsLost`], events).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// Per-slot settings that must switch together with the slot's tables.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotSettings {
    /// Policy generation this slot holds (reported in flow events).
    pub generation: u32,
    /// 1 if ingress is default deny (some policy selects this node for ingress).
    pub ingress_default_deny: u8,
    /// 1 if would-be drops are forwarded and reported as AUDIT.
    pub audit: u8,
    /// 1 if forwarded packets produce flow events (drops and audits always do).
    pub forward_events: u8,
    /// Explicit padding; always zero.
    pub pad: u8,
}

/// One rule-set entry: a protocol and port range with the action that applies.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortEntry {
    /// First port of the inclusive range (0 with `port_hi` 65535 = any port).
    pub port_lo: u16,
    /// Last port of the inclusive range.
    pub port_hi: u16,
    /// Index of the rule this entry came from, reported in flow events.
    pub rule_id: u32,
    /// One of the [`protocol`] codes.
    pub protocol: u8,
    /// One of the [`action`] codes.
    pub action: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 2],
}

/// Everything that applies to packets from one source prefix. Deny entries come
/// first, so the first entry that matches decides.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// Number of valid entries.
    pub len: u32,
    /// The entries; only the first `len` are valid.
    pub entries: [PortEntry; MAX_ENTRIES_PER_RULE_SET],
}

impl Default for RuleSet {
    fn default() -> Self {
        Self {
            len: 0,
            entries: [PortEntry::default(); MAX_ENTRIES_PER_RULE_SET],
        }
    }
}

/// A flow event, written by the kernel for every drop and every judged forward.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` when the packet was judged.
    pub monotonic_ns: u64,
    /// Source address ([`Address`] encoding).
    pub source: Address,
    /// Destination address ([`Address`] encoding).
    pub destination: Address,
    /// Rule that decided, or [`NO_RULE`].
    pub rule_id: u32,
    /// Policy generation the verdict came from.
    pub generation: u32,
    /// Interface index the packet arrived on.
    pub ifindex: u32,
    /// Length of the packet in bytes.
    pub packet_len: u32,
    /// L4 source port (0 when there is none).
    pub source_port: u16,
    /// L4 destination port (0 when there is none).
    pub destination_port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// One of the [`verdict`] codes.
    pub verdict: u8,
    /// One of the [`drop_reason`] codes.
    pub drop_reason: u8,
    /// One of the [`direction`] codes.
    pub direction: u8,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20).
    pub tcp_flags: u8,
    /// ICMP type (when the protocol is ICMP or ICMPv6).
    pub icmp_type: u8,
    /// ICMP code (when the protocol is ICMP or ICMPv6).
    pub icmp_code: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 4],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers, and have no
    // implicit padding (every gap is an explicit `pad` field).
    unsafe impl aya::Pod for super::SlotSettings {}
    unsafe impl aya::Pod for super::PortEntry {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::CounterValue {}
}
