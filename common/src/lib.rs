//! Types shared by palisade's eBPF programs and userspace: map keys and values,
//! the flow event record, and the verdict and drop-reason codes.
//!
//! Everything here is `#[repr(C)]` and padded explicitly, because the kernel and
//! userspace must agree on the byte layout.
#![no_std]

/// Name of the XDP prefilter program (stateless source-prefix drops on ingress).
pub const XDP_PREFILTER_PROGRAM: &str = "palisade_xdp_prefilter";
/// Name of the TC ingress program (stateful host firewall, traffic to this node).
pub const TC_INGRESS_PROGRAM: &str = "palisade_tc_ingress";
/// Name of the TC egress program (stateful host firewall, traffic from this node).
pub const TC_EGRESS_PROGRAM: &str = "palisade_tc_egress";
/// Name of the map that holds the index (0 or 1) of the live table slot.
pub const ACTIVE_SLOT_MAP: &str = "ACTIVE_SLOT";
/// Name of the map that holds one [`SlotSettings`] per table slot.
pub const SLOT_SETTINGS_MAP: &str = "SLOT_SETTINGS";
/// Names of the per-slot hash maps from an IPv6 [`PrefixKey`] to rule-set
/// index (or rule id, for the prefilter).
pub const PREFIX_MAPS: [&str; 2] = ["PREFIXES_0", "PREFIXES_1"];
/// Names of the per-slot hash maps from a [`PrefixKeyV4`] to rule-set index:
/// IPv4 has its own maps so that each probe hashes 8 bytes, not 20.
pub const PREFIX_V4_MAPS: [&str; 2] = ["PREFIXES_V4_0", "PREFIXES_V4_1"];
/// Names of the per-slot arrays of [`RuleSet`]s.
pub const RULE_SET_MAPS: [&str; 2] = ["RULE_SETS_0", "RULE_SETS_1"];
/// Names of the per-slot, per-CPU arrays of per-rule [`CounterValue`]s.
pub const RULE_COUNTER_MAPS: [&str; 2] = ["RULE_COUNTERS_0", "RULE_COUNTERS_1"];
/// Name of the bitmap array of always-allowed services ([`failsafe_bit`]).
pub const FAILSAFE_MAP: &str = "FAILSAFE";
/// Name of the LRU conntrack table for TCP.
pub const CT_TCP_MAP: &str = "CT_TCP";
/// Name of the LRU conntrack table for every other protocol.
pub const CT_ANY_MAP: &str = "CT_ANY";
/// Name of the LRU table carrying a first fragment's ports to later fragments.
pub const FRAGMENTS_MAP: &str = "FRAGMENTS";
/// Name of the ring buffer carrying [`FlowEvent`]s to userspace.
pub const FLOW_EVENTS_MAP: &str = "FLOW_EVENTS";
/// Name of the per-CPU array of [`Counter`] values (per direction).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the per-CPU [`EventBudget`] used to rate-limit and sample events.
pub const EVENT_BUDGET_MAP: &str = "EVENT_BUDGET";
/// Name of the array of address masks by prefix length (`[u32; 4]` each).
pub const PREFIX_MASKS_MAP: &str = "PREFIX_MASKS";
/// Maps that outlive palisaded (pinned by name): the connection state.
pub const PINNED_MAPS: [&str; 3] = [CT_TCP_MAP, CT_ANY_MAP, FRAGMENTS_MAP];

/// Number of table slots: one live, one being written.
pub const SLOT_COUNT: u32 = 2;
/// Most port entries one rule set can hold (the eBPF side scans them in order).
pub const MAX_ENTRIES_PER_RULE_SET: usize = 32;
/// Default capacity of each prefix map (Cilium's `bpf-policy-map-max` is 16384
/// per endpoint; one host table here holds every direction's prefixes).
pub const DEFAULT_PREFIX_CAPACITY: u32 = 65_536;
/// Default capacity of each rule-set array.
pub const DEFAULT_RULE_SET_CAPACITY: u32 = 4_096;
/// Default capacity of the per-rule counters (the most rules a table can hold).
pub const DEFAULT_RULE_CAPACITY: u32 = 16_384;
/// Default TCP conntrack capacity (Cilium's `bpf-ct-global-tcp-max`).
pub const DEFAULT_CT_TCP_CAPACITY: u32 = 524_288;
/// Default non-TCP conntrack capacity (Cilium's `bpf-ct-global-any-max`).
pub const DEFAULT_CT_ANY_CAPACITY: u32 = 262_144;
/// Capacity of the fragment table (datagrams being reassembled at once).
pub const FRAGMENT_CAPACITY: u32 = 8_192;
/// Words of the failsafe bitmap per direction and protocol: a bit per port.
pub const FAILSAFE_WORDS_PER_LIST: u32 = 65_536 / 64;
/// Words of one slot's failsafe bitmap: 2 directions x 3 protocols
/// ([`failsafe_bit`]). The map holds one bitmap per slot, slot 1's after
/// slot 0's, so a reload switches failsafe services with the rule table.
pub const FAILSAFE_WORDS: u32 = 6 * FAILSAFE_WORDS_PER_LIST;
/// Default size of the flow-event ring buffer in bytes.
pub const FLOW_RING_BYTES: u32 = 256 * 1024;
/// Rule id carried by a verdict no rule decided (default deny, default allow).
pub const NO_RULE: u32 = u32::MAX;

/// The mark palisade's inbound IPsec states put on the packets they decrypt
/// (Cilium's `MARK_MAGIC_DECRYPT`): in tunnel mode those come back through
/// the interface, and strict mode must let them pass.
pub const IPSEC_DECRYPTED_MARK: u32 = 0x0d00;

/// The bits of the packet mark [`IPSEC_DECRYPTED_MARK`] is in.
pub const IPSEC_DECRYPTED_MARK_MASK: u32 = 0x0f00;
/// Rule id carried by a verdict the failsafe list decided.
pub const FAILSAFE_RULE: u32 = u32::MAX - 1;

/// Address bytes as stored in maps and events: IPv6, with IPv4 written as an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
pub type Address = [u8; 16];
/// Prefix length offset of IPv4-mapped addresses inside an [`Address`].
pub const IPV4_MAPPED_PREFIX_LEN: u32 = 96;

/// Which table a [`PrefixKey`] belongs to; the first two equal the
/// [`direction`] codes.
pub mod table {
    /// Ingress policy, keyed by the packet's source.
    pub const INGRESS: u8 = 1;
    /// Egress policy, keyed by the packet's destination.
    pub const EGRESS: u8 = 2;
    /// XDP prefilter, keyed by the packet's source.
    pub const PREFILTER: u8 = 3;
    /// Prefixes whose traffic must come and go through the WireGuard tunnel
    /// (strict mode), keyed by the packet's peer.
    pub const STRICT: u8 = 4;
    /// Number of tables.
    pub const COUNT: usize = 4;
}

/// Address families as stored in a [`PrefixKey`].
pub mod family {
    /// IPv4: the address sits in the first 4 bytes.
    pub const IPV4: u8 = 4;
    /// IPv6.
    pub const IPV6: u8 = 6;
}

/// Verdict codes, numbered as Hubble's `flow.Verdict` so flows read the same.
pub mod verdict {
    /// The packet was let through.
    pub const FORWARDED: u8 = 1;
    /// The packet was dropped.
    pub const DROPPED: u8 = 2;
    /// The packet would have been dropped but audit mode let it through.
    pub const AUDIT: u8 = 4;

    /// Hubble's name of a verdict.
    pub fn name(verdict: u8) -> &'static str {
        match verdict {
            FORWARDED => "FORWARDED",
            DROPPED => "DROPPED",
            AUDIT => "AUDIT",
            _ => "VERDICT_UNKNOWN",
        }
    }
}

/// Drop reasons, numbered as Cilium's `flow.DropReason` where one exists.
pub mod drop_reason {
    /// Not dropped.
    pub const NONE: u8 = 0;
    /// No allow rule matched in a default-deny direction (Cilium `POLICY_DENIED`).
    pub const POLICY_DENIED: u8 = 133;
    /// Headers too short or inconsistent to judge (Cilium `INVALID_PACKET_DROPPED`).
    pub const INVALID_PACKET: u8 = 134;
    /// The conntrack table refused a new entry (Cilium `CT_MAP_INSERTION_FAILED`).
    pub const CT_MAP_INSERTION_FAILED: u8 = 155;
    /// A later fragment whose first fragment was never seen (Cilium `FRAG_NOT_FOUND`).
    pub const FRAG_NOT_FOUND: u8 = 175;
    /// An explicit deny rule matched (Cilium `POLICY_DENY`).
    pub const POLICY_DENY: u8 = 181;
    /// Traffic of an encrypted peer's prefix seen unencrypted on an enforced
    /// interface, in WireGuard strict mode (Cilium `UNENCRYPTED_TRAFFIC`).
    pub const UNENCRYPTED_TRAFFIC: u8 = 195;
    /// Dropped by the XDP prefilter (palisade's own code; Cilium's prefilter
    /// drops are not reported as flows).
    pub const PREFILTER: u8 = 230;

    /// Hubble's name of a drop reason; `None` for [`NONE`] and unknown codes.
    pub fn name(reason: u8) -> Option<&'static str> {
        match reason {
            POLICY_DENIED => Some("POLICY_DENIED"),
            POLICY_DENY => Some("POLICY_DENY"),
            PREFILTER => Some("PREFILTER"),
            INVALID_PACKET => Some("INVALID_PACKET_DROPPED"),
            FRAG_NOT_FOUND => Some("FRAG_NOT_FOUND"),
            CT_MAP_INSERTION_FAILED => Some("CT_MAP_INSERTION_FAILED"),
            UNENCRYPTED_TRAFFIC => Some("UNENCRYPTED_TRAFFIC"),
            _ => None,
        }
    }
}

/// Rule-set entry actions.
pub mod action {
    /// Let the packet through.
    pub const ALLOW: u8 = 1;
    /// Drop the packet.
    pub const DENY: u8 = 2;
    /// A deny rule of a policy in audit mode: forward the packet and report
    /// it as AUDIT. Enforced deny rows come before these, allow rows after.
    pub const AUDIT_DENY: u8 = 3;
}

/// Values of [`SlotSettings::ingress_default_deny`] and
/// [`SlotSettings::egress_default_deny`].
pub mod default_deny {
    /// Packets no rule matches pass.
    pub const OFF: u8 = 0;
    /// Packets no rule allows are dropped (or audited in audit mode).
    pub const DROP: u8 = 1;
    /// Only policies in audit mode ask for default deny: packets no rule
    /// allows pass and are reported as AUDIT.
    pub const AUDIT: u8 = 2;
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
    /// IPsec ESP.
    pub const ESP: u8 = 50;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// Every IP protocol: what an L3-only rule (no `toPorts`) allows or denies.
    pub const ALL: u8 = 255;
}

/// Indices into the per-CPU [`COUNTERS_MAP`]: one per outcome and direction,
/// at `(direction - 1) * COUNTER_COUNT + counter`.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Counter {
    /// New connections forwarded by a rule, the default or the failsafe list.
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
    /// Packets of tracked connections (either way) and related ICMP errors.
    Established = 6,
    /// Dropped by the XDP prefilter.
    DroppedPrefilter = 7,
    /// Dropped: malformed headers.
    DroppedInvalid = 8,
    /// Dropped: later fragment with no first fragment seen.
    DroppedFragment = 9,
    /// Dropped (or, with `ct_full = "forward"`, forwarded untracked): the
    /// conntrack table refused an entry.
    CtInsertFailed = 10,
    /// Flow events not sent because of the per-CPU rate limit.
    EventsSuppressed = 11,
    /// Dropped (or audited): unencrypted traffic of an encrypted peer's
    /// prefix, in WireGuard strict mode.
    DroppedUnencrypted = 12,
}

/// Number of [`Counter`] slots per direction.
pub const COUNTER_COUNT: u32 = 13;
/// Number of directions counted (ingress, egress).
pub const COUNTED_DIRECTIONS: u32 = 2;

/// One counter slot: packets and their bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    /// Packets (or, for [`Counter::EventsLost`], events).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// Most distinct prefix lengths one table and family can use (IPv6: 0-128).
pub const MAX_PREFIX_LENGTHS: usize = 129;
/// Room for lengths in a [`PrefixLengths`]: 256, so that any `u8` index is in
/// bounds and the verifier needs no range proof beyond the `u8` mask (which
/// every verifier tracks through register copies, unlike a compared bound).
pub const PREFIX_LENGTH_SLOTS: usize = 256;

/// The distinct prefix lengths of one table and family, longest first: the
/// programs probe one hash lookup per length, so the cost of a lookup depends
/// on how many lengths a table uses, never on how many prefixes it holds.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PrefixLengths {
    /// Number of valid lengths.
    pub count: u8,
    /// Lengths, longest first; only the first `count` are valid.
    pub lengths: [u8; PREFIX_LENGTH_SLOTS],
}

impl Default for PrefixLengths {
    fn default() -> Self {
        Self {
            count: 0,
            lengths: [0; PREFIX_LENGTH_SLOTS],
        }
    }
}

/// The mask keeping the first `length` bits of an address written as four
/// big-endian words (an IPv4 address sits in the first word).
#[must_use]
pub const fn prefix_mask(length: u32) -> [u32; 4] {
    let mut mask = [0u32; 4];
    let mut word = 0;
    while word < 4 {
        let start = word as u32 * 32;
        mask[word] = if length >= start + 32 {
            u32::MAX
        } else if length <= start {
            0
        } else {
            u32::MAX << (32 - (length - start))
        };
        word += 1;
    }
    mask
}

/// Index of a table and family in [`SlotSettings::lengths`].
#[must_use]
pub const fn lengths_index(table: u8, family: u8) -> usize {
    (table as usize - 1) * 2 + if family == family::IPV4 { 0 } else { 1 }
}

/// Conntrack timeouts in seconds (defaults as Cilium's `ct-timeout-*`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// A TCP connection that has not seen a reply yet (Cilium `tcp-syn`: 60).
    pub tcp_opening: u32,
    /// An established TCP connection (Cilium `regular-tcp`: 21600).
    pub tcp_established: u32,
    /// A TCP connection after FIN in both directions or RST (Cilium `tcp-fin`: 10).
    pub tcp_closing: u32,
    /// Any other protocol (Cilium `regular-any`: 60).
    pub other: u32,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_opening: 60,
            tcp_established: 21_600,
            tcp_closing: 10,
            other: 60,
        }
    }
}

/// Per-slot settings that must switch together with the slot's tables.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotSettings {
    /// Policy generation this slot holds (reported in flow events).
    pub generation: u32,
    /// 1 if forwarded new connections produce flow events at all; then one in
    /// `forward_sample_rate` does (drops and audits always may).
    pub forward_sample_rate: u32,
    /// Flow events per second each CPU may send; 0: no limit.
    pub events_per_second: u32,
    /// Conntrack timeouts.
    pub ct_timeouts: CtTimeouts,
    /// Ingress default deny, a [`default_deny`] value.
    pub ingress_default_deny: u8,
    /// Egress default deny, a [`default_deny`] value.
    pub egress_default_deny: u8,
    /// 1 if would-be drops are forwarded and reported as AUDIT.
    pub audit: u8,
    /// 1 if a packet whose conntrack entry cannot be created is dropped;
    /// 0 if it is forwarded untracked. Counted either way.
    pub ct_full_drop: u8,
    /// Prefix lengths per table and family, see [`lengths_index`].
    pub lengths: [PrefixLengths; table::COUNT * 2],
}

/// Key of the prefix maps: one table, one family, one masked prefix. Ordered
/// field by field, so userspace writes a table in a deterministic order.
#[repr(C, align(4))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKey {
    /// One of the [`table`] codes.
    pub table: u8,
    /// One of the [`family`] codes.
    pub family: u8,
    /// Prefix length within the family (0-32 or 0-128).
    pub prefix_len: u8,
    /// Explicit padding; always zero.
    pub pad: u8,
    /// The prefix's address with host bits cleared (IPv4 in the first 4 bytes).
    pub address: Address,
}

/// An IPv4 [`PrefixKey`]: the same fields in 8 bytes.
#[repr(C, align(4))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKeyV4 {
    /// One of the [`table`] codes.
    pub table: u8,
    /// Prefix length (0-32).
    pub prefix_len: u8,
    /// Explicit padding; always zero.
    pub pad: u16,
    /// The prefix's address with host bits cleared.
    pub address: [u8; 4],
}

impl PrefixKeyV4 {
    /// The IPv4 key of an IPv4 [`PrefixKey`] (its address in the first 4 bytes).
    #[must_use]
    pub const fn from_key(key: &PrefixKey) -> Self {
        Self {
            table: key.table,
            prefix_len: key.prefix_len,
            pad: 0,
            address: [
                key.address[0],
                key.address[1],
                key.address[2],
                key.address[3],
            ],
        }
    }
}

/// A connection as conntrack keys it: its 5-tuple in one canonical order, the
/// same for both directions (see [`CtKey::canonical`]), so each packet needs
/// one lookup; [`ct_flag::KEY_REVERSED`] says whether that order is the
/// opener's. ICMP echo uses the identifier as the source port of a request
/// and the destination port of a reply, so a reply's reversed tuple is its
/// request's.
#[repr(C, align(8))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address ([`Address`] encoding).
    pub source: Address,
    /// Destination address.
    pub destination: Address,
    /// Source port (ICMP echo: identifier of a request).
    pub source_port: u16,
    /// Destination port (ICMP echo: identifier of a reply).
    pub destination_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Explicit padding; always zero.
    pub pad: u8,
    /// Explicit padding; always zero.
    pub pad_wide: u16,
}

impl CtKey {
    /// The same connection seen from the other side.
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            source: self.destination,
            destination: self.source,
            source_port: self.destination_port,
            destination_port: self.source_port,
            protocol: self.protocol,
            pad: 0,
            pad_wide: 0,
        }
    }

    /// Whether this tuple is stored reversed: the canonical order puts the
    /// lower (address, port) end first, comparing the addresses as two
    /// native-endian words, last word first (the words that differ between
    /// IPv4-mapped addresses).
    #[must_use]
    pub fn reverses(&self) -> bool {
        let words = |address: &Address| {
            let mut high = [0u8; 8];
            let mut low = [0u8; 8];
            high.copy_from_slice(&address[..8]);
            low.copy_from_slice(&address[8..]);
            (u64::from_ne_bytes(low), u64::from_ne_bytes(high))
        };
        let (source_low, source_high) = words(&self.source);
        let (destination_low, destination_high) = words(&self.destination);
        (source_low, source_high, self.source_port)
            > (destination_low, destination_high, self.destination_port)
    }

    /// The key conntrack stores this tuple under, and whether it is the
    /// tuple reversed.
    #[must_use]
    pub fn canonical(&self) -> (Self, bool) {
        if self.reverses() {
            (self.reversed(), true)
        } else {
            (*self, false)
        }
    }
}

/// Conntrack flags.
pub mod ct_flag {
    /// A packet went the reply way.
    pub const SEEN_REPLY: u8 = 0x01;
    /// The opener sent FIN.
    pub const FIN_ORIGINAL: u8 = 0x02;
    /// The other side sent FIN.
    pub const FIN_REPLY: u8 = 0x04;
    /// Either side sent RST.
    pub const RST: u8 = 0x08;
    /// The key holds the opener's tuple reversed ([`super::CtKey::canonical`]).
    pub const KEY_REVERSED: u8 = 0x10;
}

/// One tracked connection.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` after which the entry is dead.
    pub expires_ns: u64,
    /// Rule that let the connection open ([`NO_RULE`], [`FAILSAFE_RULE`]).
    pub rule_id: u32,
    /// [`ct_flag`] bits.
    pub flags: u8,
    /// [`direction`] of the packet that opened the connection.
    pub direction: u8,
    /// Explicit padding; always zero.
    pub pad: u16,
}

/// A datagram being fragmented: the fields that identify its fragments.
#[repr(C, align(8))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address.
    pub source: Address,
    /// Destination address.
    pub destination: Address,
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
    /// IP protocol number of the datagram.
    pub protocol: u8,
    /// Explicit padding; always zero.
    pub pad: u8,
    /// Explicit padding; always zero.
    pub pad_wide: u16,
}

/// The ports a first fragment carried, for the datagram's later fragments
/// (as Cilium's `ipv4_frag_datagrams` map).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FragmentPorts {
    /// L4 source port.
    pub source_port: u16,
    /// L4 destination port.
    pub destination_port: u16,
}

/// Where the bit of an always-allowed (failsafe) service sits in a slot's
/// [`FAILSAFE_MAP`] bitmap: new connections in `direction` to `port` over
/// `protocol` pass whatever the policy says. One bit per port, per protocol
/// (TCP, UDP, SCTP) and direction; other protocols have no failsafe bit.
/// Returns the index within the slot's bitmap (add `slot *`
/// [`FAILSAFE_WORDS`] for the array index) and the bit within that word.
#[must_use]
pub const fn failsafe_bit(direction: u8, protocol: u8, port: u16) -> Option<(u32, u64)> {
    let protocol_index = match protocol {
        protocol::TCP => 0,
        protocol::UDP => 1,
        protocol::SCTP => 2,
        _ => return None,
    };
    let direction_index = match direction {
        direction::INGRESS => 0,
        direction::EGRESS => 1,
        _ => return None,
    };
    let index = (direction_index * 3 + protocol_index) * FAILSAFE_WORDS_PER_LIST + port as u32 / 64;
    Some((index, 1 << (port % 64)))
}

/// Per-CPU state of the flow-event rate limit and the forward sampler.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// Start of the current one-second window.
    pub window_start_ns: u64,
    /// Events sent in the window.
    pub sent: u32,
    /// Forwarded new connections seen (for 1-in-N sampling).
    pub forwards: u32,
    /// Events suppressed since the clock was last read (over budget, the
    /// clock is read once per [`BUDGET_CLOCK_STRIDE`] suppressed events).
    pub suppressed: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

/// Over its budget, a CPU reads the clock once per this many suppressed
/// events to see whether a new one-second window began: a flood costs no
/// clock read per packet, and a new window is noticed at most this many
/// events late.
pub const BUDGET_CLOCK_STRIDE: u32 = 64;

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
    /// Interface index the packet arrived on or left by.
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
    pub pad: u32,
}

// The layouts have no implicit padding: each size is the sum of its fields.
const _: () = {
    assert!(core::mem::size_of::<SlotSettings>() == 12 + 16 + 4 + 257 * 8);
    assert!(core::mem::size_of::<PrefixKey>() == 20);
    assert!(core::mem::size_of::<PrefixKeyV4>() == 8);
    assert!(core::mem::size_of::<CtKey>() == 40);
    assert!(core::mem::size_of::<CtEntry>() == 16);
    assert!(core::mem::size_of::<FragmentKey>() == 40);
    assert!(core::mem::size_of::<FlowEvent>() == 72);
    assert!(core::mem::size_of::<RuleSet>() == 4 + 12 * MAX_ENTRIES_PER_RULE_SET);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers, and have no
    // implicit padding (every gap is an explicit `pad` field).
    unsafe impl aya::Pod for super::SlotSettings {}
    unsafe impl aya::Pod for super::PortEntry {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::CounterValue {}
    unsafe impl aya::Pod for super::PrefixKey {}
    unsafe impl aya::Pod for super::PrefixKeyV4 {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentPorts {}
}
