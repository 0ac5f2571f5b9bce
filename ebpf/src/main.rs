//! palisade's kernel programs: a stateful host firewall on TC ingress and
//! egress, and a stateless XDP prefilter in front of it.
//!
//! TC, per packet: parse Ethernet / IPv4 or IPv6 / L4; pass what keeps the
//! host working (non-IP such as ARP, IPv6 neighbour discovery); give a later
//! fragment the ports of its first; look the connection up in conntrack
//! (packets of tracked connections, replies and related ICMP errors pass);
//! judge a new connection: the failsafe list, then the live slot's prefix
//! table for the peer address (one hash probe per prefix length in use), that
//! prefix's rule set (deny entries first, first match decides), then the
//! direction's default; track what was let through.
//!
//! XDP: drop packets from the prefilter's source prefixes before the stack
//! sees them.
#![no_std]
#![no_main]
#![allow(
    missing_docs,
    reason = "aya's #[xdp] and #[classifier] macros generate undocumented wrappers"
)]
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's #[classifier] generates the safe entry point that takes the kernel's context pointer"
)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    cty::c_void,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_loop, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use palisade_common::{
    Address, BUDGET_CLOCK_STRIDE, COUNTED_DIRECTIONS, COUNTER_COUNT, Counter, CounterValue,
    CtEntry, CtKey, DEFAULT_CT_ANY_CAPACITY, DEFAULT_CT_TCP_CAPACITY, DEFAULT_PREFIX_CAPACITY,
    DEFAULT_RULE_CAPACITY, DEFAULT_RULE_SET_CAPACITY, EventBudget, FAILSAFE_RULE, FAILSAFE_WORDS,
    FLOW_RING_BYTES, FRAGMENT_CAPACITY, FlowEvent, FragmentKey, FragmentPorts,
    MAX_ENTRIES_PER_RULE_SET, MAX_PREFIX_LENGTHS, NO_RULE, PrefixKey, PrefixKeyV4, PrefixLengths,
    RuleSet, SLOT_COUNT, SlotSettings, action, ct_flag, default_deny, direction, drop_reason,
    failsafe_bit, family, lengths_index, protocol, table, verdict,
};

#[map]
static ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static SLOT_SETTINGS: Array<SlotSettings> = Array::with_max_entries(SLOT_COUNT, 0);

#[map]
static PREFIXES_0: HashMap<PrefixKey, u32> = HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
static PREFIXES_1: HashMap<PrefixKey, u32> = HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
static PREFIXES_V4_0: HashMap<PrefixKeyV4, u32> =
    HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
static PREFIXES_V4_1: HashMap<PrefixKeyV4, u32> =
    HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
static RULE_SETS_0: Array<RuleSet> = Array::with_max_entries(DEFAULT_RULE_SET_CAPACITY, 0);

#[map]
static RULE_SETS_1: Array<RuleSet> = Array::with_max_entries(DEFAULT_RULE_SET_CAPACITY, 0);

#[map]
static RULE_COUNTERS_0: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
static RULE_COUNTERS_1: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
static FAILSAFE: Array<u64> = Array::with_max_entries(FAILSAFE_WORDS * SLOT_COUNT, 0);

#[map]
static CT_TCP: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_CT_TCP_CAPACITY, 0);

#[map]
static CT_ANY: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_CT_ANY_CAPACITY, 0);

#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> = LruHashMap::pinned(FRAGMENT_CAPACITY, 0);

#[map]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(COUNTER_COUNT * COUNTED_DIRECTIONS, 0);

/// Per-CPU scratch space for the packet being judged, one entry per
/// [`direction`] code. Kept in a map rather than on the stack: the verifier
/// does not track what a map value holds, so the paths through the parser
/// meet again afterwards instead of each walking the rest of the program
/// with its own constants (and the 512-byte stack has room to spare).
#[map]
static PACKETS: PerCpuArray<Packet> = PerCpuArray::with_max_entries(COUNTED_DIRECTIONS + 1, 0);

#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Address masks by prefix length (userspace fills it at load): entry `n`
/// keeps the first `n` bits of four big-endian words.
#[map]
static PREFIX_MASKS: Array<[u32; 4]> = Array::with_max_entries(MAX_PREFIX_LENGTHS as u32, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT_V6: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up (the packet is then judged by
/// the last next-header value, as an unknown protocol).
const MAX_IPV6_EXTENSION_HEADERS: usize = 4;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_RST: u8 = 0x04;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const NS_PER_SECOND: u64 = 1_000_000_000;
/// The farthest into a frame a header is read (Ethernet, IPv6 with its
/// extension headers, L4, an ICMP error's quoted header).
const MAX_HEADER_OFFSET: usize = 1024;

/// A packet the programs can read: XDP reads the frame directly, TC through
/// `bpf_skb_load_bytes` (headers of an skb need not be linear).
trait Frame {
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()>;
    fn length(&self) -> u32;
    fn ifindex(&self) -> u32;
}

/// A `T` at `offset` of the packet between `start` and `end` (the context's
/// data pointers), when all of it lies there.
#[inline(always)]
fn read_direct<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    // Bounded for the verifier, which refuses packet pointer arithmetic with
    // an offset it cannot bound (one read back from a map, say).
    if offset > MAX_HEADER_OFFSET || start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the bytes lie between data and data_end, checked just above.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

impl Frame for XdpContext {
    /// Straight from the packet when the bytes are in the first buffer, else
    /// through `bpf_xdp_load_bytes` (multi-buffer frames).
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        if let Some(value) = read_direct(self.data(), self.data_end(), offset) {
            return Ok(value);
        }
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes or fails.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                offset as u32,
                value.as_mut_ptr().cast(),
                core::mem::size_of::<T>() as u32,
            )
        };
        if rc != 0 {
            return Err(());
        }
        // SAFETY: the helper succeeded, so every byte was written.
        Ok(unsafe { value.assume_init() })
    }

    /// The program is loaded without XDP multi-buffer support (section
    /// `xdp`, not `xdp.frags`), so the kernel only hands it frames that sit
    /// in one buffer: its length is `data_end - data`, no helper call needed.
    #[inline(always)]
    fn length(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context points at the kernel's xdp_md for this program.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

impl Frame for TcContext {
    /// Straight from the packet when the bytes are in the linear part (the
    /// headers nearly always are), else through `bpf_skb_load_bytes`.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        if let Some(value) = read_direct(self.data(), self.data_end(), offset) {
            return Ok(value);
        }
        self.load::<T>(offset).map_err(|_| ())
    }

    #[inline(always)]
    fn length(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context points at the kernel's __sk_buff for this program.
        unsafe { (*(self.as_ptr() as *const __sk_buff)).ifindex }
    }
}

/// Where a packet sits in a fragmented datagram. Plain fields rather than
/// an enum with data: storing a data-less variant copies its undefined
/// payload, which the verifier refuses as a read of an uninitialised
/// register. The place is computed without branches, so the verifier does
/// not follow one path per place through the rest of the program.
#[derive(Clone, Copy)]
struct Fragment {
    /// One of [`Fragment::WHOLE`], [`Fragment::FIRST`], [`Fragment::LATER`].
    place: u8,
    /// The datagram's identification (meaningless when whole).
    id: u32,
}

impl Fragment {
    /// Not fragmented.
    const WHOLE: u8 = 0;
    /// The first fragment: it carries the L4 header.
    const FIRST: u8 = 1;
    /// A later fragment: no L4 header.
    const LATER: u8 = 2;

    /// The place given by a fragment offset and the more-fragments flag (0 or 1).
    #[inline(always)]
    fn new(offset: u16, more_fragments: u16, id: u32) -> Self {
        // 1 when the offset is not zero.
        let later = (u32::from(offset) + 0xffff) >> 16;
        let first = u32::from(more_fragments & 1) & (later ^ 1);
        Self {
            place: ((later << 1) | first) as u8,
            id,
        }
    }
}

/// What the parser learned about one packet. Aligned so that the addresses
/// are copied by words, not byte by byte.
#[repr(C, align(8))]
struct Packet {
    source: Address,
    destination: Address,
    family: u8,
    protocol: u8,
    source_port: u16,
    destination_port: u16,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
    icmp_id: u16,
    fragment: Fragment,
    l4_offset: usize,
    /// Passes without policy (ICMPv6 that keeps IPv6 working).
    bypass: bool,
}

impl Packet {
    /// What a rule's port range is matched against: the destination port, or
    /// the type for ICMP and ICMPv6.
    #[inline(always)]
    fn policy_port(&self) -> u16 {
        if self.protocol == protocol::ICMP || self.protocol == protocol::ICMPV6 {
            u16::from(self.icmp_type)
        } else {
            self.destination_port
        }
    }
}

/// The decision for one new connection.
struct Decision {
    verdict: u8,
    drop_reason: u8,
    rule_id: u32,
}

/// How conntrack classified a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracked {
    /// No live entry: a new connection, to be judged.
    New,
    /// Part of (or an ICMP error about) a tracked connection.
    Known,
}

/// XDP entry point: the prefilter.
#[xdp]
pub fn palisade_xdp_prefilter(ctx: XdpContext) -> u32 {
    // Malformed packets go on to TC, which drops and reports them.
    prefilter(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// TC entry point on ingress: traffic to this node.
#[classifier]
pub fn palisade_tc_ingress(ctx: TcContext) -> i32 {
    firewall(&ctx, direction::INGRESS)
}

/// TC entry point on egress: traffic from this node.
#[classifier]
pub fn palisade_tc_egress(ctx: TcContext) -> i32 {
    firewall(&ctx, direction::EGRESS)
}

#[inline(always)]
fn active_slot() -> u32 {
    match ACTIVE_SLOT.get(0) {
        Some(slot) if *slot < SLOT_COUNT => *slot,
        _ => 0,
    }
}

/// The XDP prefilter. IPv4 is judged from its IP header alone (the source,
/// and for the failsafe check the protocol and destination port); the full
/// parser runs for IPv6 and for the few drops that are reported.
fn prefilter(ctx: &XdpContext) -> Result<u32, ()> {
    let slot = active_slot();
    let Some(settings) = SLOT_SETTINGS.get(slot) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let ether_type = u16::from_be(ctx.read::<u16>(12)?);
    let rule_id = if ether_type == ETH_P_IPV4 {
        prefilter_v4(ctx, slot, settings)?
    } else {
        let mut packet = empty_packet();
        if parse(ctx, &mut packet) != Parsed::Ip {
            return Ok(xdp_action::XDP_PASS);
        }
        lookup(
            slot,
            settings,
            table::PREFILTER,
            packet.family,
            &packet.source,
        )
        .filter(|_| {
            !is_failsafe(
                slot,
                direction::INGRESS,
                packet.protocol,
                packet.destination_port,
            )
        })
    };
    let Some(rule_id) = rule_id else {
        return Ok(xdp_action::XDP_PASS);
    };
    bump(direction::INGRESS, Counter::DroppedPrefilter, ctx.length());
    if may_report(direction::INGRESS, settings, false) {
        let mut packet = empty_packet();
        if parse(ctx, &mut packet) == Parsed::Ip {
            let decision = Decision {
                verdict: verdict::DROPPED,
                drop_reason: drop_reason::PREFILTER,
                rule_id,
            };
            report(
                ctx,
                direction::INGRESS,
                &packet,
                &decision,
                settings.generation,
            );
        }
    }
    Ok(xdp_action::XDP_DROP)
}

/// The prefilter rule an IPv4 packet's source falls in, unless the packet is
/// malformed (left to TC, which drops and reports it) or goes to a failsafe
/// service.
#[inline(always)]
fn prefilter_v4(ctx: &XdpContext, slot: u32, settings: &SlotSettings) -> Result<Option<u32>, ()> {
    let lengths = settings
        .lengths
        .get(lengths_index(table::PREFILTER, family::IPV4))
        .ok_or(())?;
    if lengths.count == 0 {
        return Ok(None);
    }
    let header: [u8; 20] = ctx.read(ETH_HLEN)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < 20 {
        return Ok(None);
    }
    let source = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    let Some(rule_id) = lookup_v4(slot, lengths, table::PREFILTER, source) else {
        return Ok(None);
    };
    let protocol = header[9];
    let later_fragment = u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0;
    let port = if !later_fragment
        && (protocol == protocol::TCP || protocol == protocol::UDP || protocol == protocol::SCTP)
    {
        u16::from_be(ctx.read::<u16>(ETH_HLEN + header_len + 2)?)
    } else {
        0
    };
    Ok((!is_failsafe(slot, direction::INGRESS, protocol, port)).then_some(rule_id))
}

/// The TC program. Every function call and return costs here (retpolines
/// and return thunks on CPUs that need them), so the hot path is inlined
/// into one body; `finish` stays a call, made from one place.
#[inline(always)]
fn firewall(ctx: &TcContext, way: u8) -> i32 {
    let slot = active_slot();
    let Some(settings) = SLOT_SETTINGS.get(slot) else {
        return TC_ACT_UNSPEC;
    };
    let Some(packet) = PACKETS.get_ptr_mut(u32::from(way)) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's scratch entry for this direction; nothing else runs
    // on this CPU in between (TC runs with bottom halves disabled).
    let packet = unsafe { &mut *packet };
    *packet = empty_packet();
    let Some(decision) = judge(ctx, way, slot, settings, packet) else {
        return TC_ACT_UNSPEC;
    };
    if finish(ctx, way, packet, &decision, settings) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

/// The verdict on a packet, or `None` when it is not ours to judge (not IP,
/// always allowed) or belongs to a tracked connection (counted here).
#[inline(always)]
fn judge(
    ctx: &TcContext,
    way: u8,
    slot: u32,
    settings: &SlotSettings,
    packet: &mut Packet,
) -> Option<Decision> {
    match parse_headers(ctx, packet) {
        Ok(true) => {}
        // Not IP (ARP, LLDP, ...): not ours to judge.
        Ok(false) => return None,
        Err(()) => {
            return Some(drop_or_audit(
                settings,
                drop_reason::INVALID_PACKET,
                NO_RULE,
            ));
        }
    }
    if packet.bypass {
        return None;
    }
    if !follow_fragment(packet) {
        return Some(drop_or_audit(
            settings,
            drop_reason::FRAG_NOT_FOUND,
            NO_RULE,
        ));
    }
    if strict_mode(settings, packet.family) && unencrypted(slot, settings, way, packet) {
        return Some(drop_or_audit(
            settings,
            drop_reason::UNENCRYPTED_TRAFFIC,
            NO_RULE,
        ));
    }
    if track(ctx, packet, settings) == Tracked::Known {
        bump(way, Counter::Established, ctx.length());
        return None;
    }
    let mut decision = if is_failsafe(slot, way, packet.protocol, packet.destination_port) {
        Decision {
            verdict: verdict::FORWARDED,
            drop_reason: drop_reason::NONE,
            rule_id: FAILSAFE_RULE,
        }
    } else {
        decide(slot, settings, way, packet)
    };
    if decision.verdict != verdict::DROPPED && !open_connection(packet, way, &decision, settings) {
        bump(way, Counter::CtInsertFailed, ctx.length());
        if settings.ct_full_drop != 0 {
            decision = drop_or_audit(settings, drop_reason::CT_MAP_INSERTION_FAILED, NO_RULE);
        }
    }
    count_rule(slot, decision.rule_id, ctx.length());
    Some(decision)
}

#[inline(always)]
fn empty_packet() -> Packet {
    Packet {
        source: [0; 16],
        destination: [0; 16],
        family: 0,
        protocol: 0,
        source_port: 0,
        destination_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
        fragment: Fragment {
            place: Fragment::WHOLE,
            id: 0,
        },
        l4_offset: 0,
        bypass: false,
    }
}

/// What [`parse`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// An IP packet, now in the `Packet`.
    Ip,
    /// Not IP (ARP, LLDP, ...).
    NotIp,
    /// IP headers too short or inconsistent to judge.
    Malformed,
}

/// Parses the frame into `packet` (the XDP prefilter's parser; TC inlines
/// [`parse_headers`]: in the XDP program, inlining it makes LLVM store an
/// uninitialised register, which the verifier refuses).
#[inline(never)]
fn parse<F: Frame>(frame: &F, packet: &mut Packet) -> Parsed {
    match parse_headers(frame, packet) {
        Ok(true) => Parsed::Ip,
        Ok(false) => Parsed::NotIp,
        Err(()) => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_headers<F: Frame>(frame: &F, packet: &mut Packet) -> Result<bool, ()> {
    let ether_type = u16::from_be(frame.read::<u16>(12)?);
    if ether_type == ETH_P_IPV4 {
        let header: [u8; 20] = frame.read(ETH_HLEN)?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        if header[0] >> 4 != 4 || header_len < 20 {
            return Err(());
        }
        packet.family = family::IPV4;
        packet.protocol = header[9];
        packet.source = mapped_v4([header[12], header[13], header[14], header[15]]);
        packet.destination = mapped_v4([header[16], header[17], header[18], header[19]]);
        let id = u32::from(u16::from_be_bytes([header[4], header[5]]));
        let fragment = u16::from_be_bytes([header[6], header[7]]);
        packet.fragment = Fragment::new(fragment & 0x1fff, fragment >> 13, id);
        packet.l4_offset = ETH_HLEN + header_len;
    } else if ether_type == ETH_P_IPV6 {
        let header: [u8; 8] = frame.read(ETH_HLEN)?;
        if header[0] >> 4 != 6 {
            return Err(());
        }
        packet.family = family::IPV6;
        packet.source = frame.read(ETH_HLEN + 8)?;
        packet.destination = frame.read(ETH_HLEN + 24)?;
        let mut next = header[6];
        let mut offset = ETH_HLEN + IPV6_HLEN;
        // Walk the extension headers to the transport header.
        for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
            match next {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    let extension: [u8; 2] = frame.read(offset)?;
                    next = extension[0];
                    offset += (usize::from(extension[1]) + 1) * 8;
                }
                IPPROTO_FRAGMENT_V6 => {
                    let fragment: [u8; 8] = frame.read(offset)?;
                    next = fragment[0];
                    let id =
                        u32::from_be_bytes([fragment[4], fragment[5], fragment[6], fragment[7]]);
                    let offset_and_more = u16::from_be_bytes([fragment[2], fragment[3]]);
                    packet.fragment = Fragment::new(offset_and_more & 0xfff8, offset_and_more, id);
                    offset += 8;
                }
                _ => break,
            }
        }
        packet.protocol = next;
        packet.l4_offset = offset;
    } else {
        return Ok(false);
    }
    if packet.fragment.place == Fragment::LATER {
        // No L4 header: the ports come from the first fragment.
        return Ok(true);
    }
    let l4 = packet.l4_offset;
    match packet.protocol {
        protocol::TCP => {
            let header: [u8; 14] = frame.read(l4)?;
            packet.source_port = u16::from_be_bytes([header[0], header[1]]);
            packet.destination_port = u16::from_be_bytes([header[2], header[3]]);
            packet.tcp_flags = header[13];
        }
        protocol::UDP | protocol::SCTP => {
            let ports: [u8; 4] = frame.read(l4)?;
            packet.source_port = u16::from_be_bytes([ports[0], ports[1]]);
            packet.destination_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        protocol::ICMP | protocol::ICMPV6 => {
            let header: [u8; 6] = frame.read(l4)?;
            packet.icmp_type = header[0];
            packet.icmp_code = header[1];
            packet.icmp_id = u16::from_be_bytes([header[4], header[5]]);
            packet.bypass =
                packet.protocol == protocol::ICMPV6 && icmpv6_bypasses_policy(packet.icmp_type);
        }
        _ => {}
    }
    Ok(true)
}

/// ICMPv6 types that keep IPv6 working and pass without policy, as in
/// Cilium's host firewall (bpf/lib/icmp6.h, after RFC 4890): errors (1-4),
/// MLD (130-132, 143), neighbour discovery (133-137), inverse ND (141-142),
/// certification path (148-149) and multicast router discovery (151-153).
/// Echo request and reply (128/129) go to conntrack and policy.
#[inline(always)]
fn icmpv6_bypasses_policy(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4 | 130..=137 | 141..=143 | 148..=149 | 151..=153)
}

#[inline(always)]
fn mapped_v4(octets: [u8; 4]) -> Address {
    // Built as one number: a byte array literal with ten zeros becomes a
    // call to a byte-by-byte memset in BPF.
    (0xffff_u128 << 32 | u128::from(u32::from_be_bytes(octets))).to_be_bytes()
}

/// Records a first fragment's ports, or gives a later fragment the ports of
/// its first. False for a later fragment whose first was never seen.
#[inline(always)]
fn follow_fragment(packet: &mut Packet) -> bool {
    if packet.fragment.place == Fragment::WHOLE {
        return true;
    }
    let id = packet.fragment.id;
    let key = FragmentKey {
        source: packet.source,
        destination: packet.destination,
        id,
        protocol: packet.protocol,
        pad: 0,
        pad_wide: 0,
    };
    if packet.fragment.place == Fragment::FIRST {
        let ports = FragmentPorts {
            source_port: packet.source_port,
            destination_port: packet.destination_port,
        };
        // A full table evicts the oldest datagram; its later fragments drop.
        let _ = FRAGMENTS.insert(&key, &ports, 0);
        return true;
    }
    // SAFETY: the value is read at once; a concurrent update at worst gives
    // another fragment's ports of the same datagram, which are equal.
    match unsafe { FRAGMENTS.get(&key) } {
        Some(ports) => {
            packet.source_port = ports.source_port;
            packet.destination_port = ports.destination_port;
            true
        }
        None => false,
    }
}

/// The conntrack key of a packet in its own direction.
#[inline(always)]
fn ct_key(packet: &Packet) -> CtKey {
    let (source_port, destination_port) = match (packet.protocol, packet.icmp_type) {
        (protocol::ICMP, ICMP_ECHO_REQUEST) | (protocol::ICMPV6, ICMPV6_ECHO_REQUEST) => {
            (packet.icmp_id, 0)
        }
        (protocol::ICMP, ICMP_ECHO_REPLY) | (protocol::ICMPV6, ICMPV6_ECHO_REPLY) => {
            (0, packet.icmp_id)
        }
        _ => (packet.source_port, packet.destination_port),
    };
    CtKey {
        source: packet.source,
        destination: packet.destination,
        source_port,
        destination_port,
        protocol: packet.protocol,
        pad: 0,
        pad_wide: 0,
    }
}

#[inline(always)]
fn ct_table(protocol_number: u8) -> &'static LruHashMap<CtKey, CtEntry> {
    if protocol_number == protocol::TCP {
        &CT_TCP
    } else {
        &CT_ANY
    }
}

/// Looks the packet up in conntrack (one lookup: both directions share the
/// canonical key), refreshing the entry it belongs to.
#[inline(always)]
fn track<F: Frame>(frame: &F, packet: &Packet, settings: &SlotSettings) -> Tracked {
    let (key, reversed) = ct_key(packet).canonical();
    if let Some(entry) = ct_table(packet.protocol).get_ptr_mut(&key) {
        // The clock is read only for a hit: a new connection needs none here.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if refresh(entry, packet, reversed, now, settings) {
            return Tracked::Known;
        }
    }
    if packet.protocol == protocol::ICMP
        && matches!(
            packet.icmp_type,
            ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
        && related_error(frame, packet)
    {
        return Tracked::Known;
    }
    Tracked::New
}

/// Updates a live entry for one more packet; false if the entry had expired.
#[inline(always)]
fn refresh(
    entry: *mut CtEntry,
    packet: &Packet,
    key_reversed: bool,
    now: u64,
    settings: &SlotSettings,
) -> bool {
    // SAFETY: the pointer came from a successful map lookup; concurrent
    // updates from other CPUs can only race on these plain fields.
    let entry = unsafe { &mut *entry };
    if entry.expires_ns < now {
        return false;
    }
    let mut flags = entry.flags;
    // The packet goes the opener's way when its tuple needed the same turn.
    let original = key_reversed == (flags & ct_flag::KEY_REVERSED != 0);
    if !original {
        flags |= ct_flag::SEEN_REPLY;
    }
    let timeouts = &settings.ct_timeouts;
    let lifetime = if packet.protocol == protocol::TCP {
        if packet.tcp_flags & TCP_FLAG_RST != 0 {
            flags |= ct_flag::RST;
        }
        if packet.tcp_flags & TCP_FLAG_FIN != 0 {
            flags |= if original {
                ct_flag::FIN_ORIGINAL
            } else {
                ct_flag::FIN_REPLY
            };
        }
        let both_fins = ct_flag::FIN_ORIGINAL | ct_flag::FIN_REPLY;
        if flags & ct_flag::RST != 0 || flags & both_fins == both_fins {
            timeouts.tcp_closing
        } else if flags & ct_flag::SEEN_REPLY != 0 {
            timeouts.tcp_established
        } else {
            timeouts.tcp_opening
        }
    } else {
        timeouts.other
    };
    let expires = now + u64::from(lifetime) * NS_PER_SECOND;
    // Write only when something changes (saves a cache-line bounce per packet).
    if flags != entry.flags
        || expires > entry.expires_ns + NS_PER_SECOND
        || expires < entry.expires_ns
    {
        entry.flags = flags;
        entry.expires_ns = expires;
    }
    true
}

/// An ICMPv4 error about a tracked connection: the quoted header is the
/// connection's packet going the other way.
#[inline(never)]
fn related_error<F: Frame>(frame: &F, packet: &Packet) -> bool {
    let quoted = packet.l4_offset + 8;
    let Ok(header) = frame.read::<[u8; 20]>(quoted) else {
        return false;
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < 20 {
        return false;
    }
    let Ok(ports) = frame.read::<[u8; 4]>(quoted + header_len) else {
        return false;
    };
    let key = CtKey {
        source: mapped_v4([header[12], header[13], header[14], header[15]]),
        destination: mapped_v4([header[16], header[17], header[18], header[19]]),
        source_port: u16::from_be_bytes([ports[0], ports[1]]),
        destination_port: u16::from_be_bytes([ports[2], ports[3]]),
        protocol: header[9],
        pad: 0,
        pad_wide: 0,
    };
    let Some(entry) = ct_table(key.protocol).get_ptr_mut(&key.canonical().0) else {
        return false;
    };
    // SAFETY: read-only look at an entry returned by a lookup.
    unsafe { (*entry).expires_ns >= bpf_ktime_get_coarse_ns() }
}

/// Tracks a connection that was just let through; false if the table refused.
#[inline(never)]
fn open_connection(packet: &Packet, way: u8, decision: &Decision, settings: &SlotSettings) -> bool {
    // A later fragment or a reset opens nothing.
    if packet.fragment.place == Fragment::LATER
        || (packet.protocol == protocol::TCP && packet.tcp_flags & TCP_FLAG_RST != 0)
    {
        return true;
    }
    let lifetime = if packet.protocol == protocol::TCP {
        settings.ct_timeouts.tcp_opening
    } else {
        settings.ct_timeouts.other
    };
    let (key, reversed) = ct_key(packet).canonical();
    let entry = CtEntry {
        expires_ns: unsafe { bpf_ktime_get_coarse_ns() } + u64::from(lifetime) * NS_PER_SECOND,
        rule_id: decision.rule_id,
        flags: if reversed { ct_flag::KEY_REVERSED } else { 0 },
        direction: way,
        pad: 0,
    };
    ct_table(packet.protocol).insert(&key, &entry, 0).is_ok()
}

/// Whether the live slot's failsafe list lets a new connection to `port`
/// through, whatever the policy says.
#[inline(always)]
fn is_failsafe(slot: u32, way: u8, protocol: u8, port: u16) -> bool {
    let Some((index, bit)) = failsafe_bit(way, protocol, port) else {
        return false;
    };
    FAILSAFE
        .get(slot * FAILSAFE_WORDS + index)
        .is_some_and(|word| word & bit != 0)
}

/// The state of one longest-prefix lookup, shared with [`probe_length`].
#[repr(C)]
struct Probe {
    key: PrefixKey,
    words: [u32; 4],
    slot: u32,
    lengths_index: u32,
    /// The value found (rule-set index or rule id).
    value: u32,
    /// 1 once a prefix matched.
    hit: u32,
}

/// The longest prefix of `table_code` containing `address`: one hash probe
/// per prefix length in use, longest first. IPv4 probes in a bounded loop
/// ([`lookup_v4`]); IPv6, with up to 129 lengths, under `bpf_loop`, so the
/// verifier checks one probe, not one per possible length.
#[inline(always)]
fn lookup(
    slot: u32,
    settings: &SlotSettings,
    table_code: u8,
    address_family: u8,
    address: &Address,
) -> Option<u32> {
    let lengths_index = lengths_index(table_code, address_family);
    let lengths = settings.lengths.get(lengths_index)?;
    let count = lengths.count;
    if count == 0 {
        return None;
    }
    if address_family == family::IPV4 {
        let word = u32::from_be_bytes([address[12], address[13], address[14], address[15]]);
        return lookup_v4(slot, lengths, table_code, word);
    }
    let mut probe = Probe {
        key: PrefixKey {
            table: table_code,
            family: address_family,
            prefix_len: 0,
            pad: 0,
            // Overwritten by every probe; a copy, not zeros, which would be
            // a byte-by-byte memset call in BPF.
            address: *address,
        },
        words: address_words(address),
        slot,
        lengths_index: lengths_index as u32,
        value: 0,
        hit: 0,
    };
    // SAFETY: the callback only touches the Probe it is handed.
    unsafe {
        bpf_loop(
            u32::from(count),
            probe_length as *mut c_void,
            (&raw mut probe).cast(),
            0,
        );
    }
    (probe.hit != 0).then_some(probe.value)
}

/// [`lookup`] for IPv4: at most 33 lengths, probed in a bounded loop (a
/// `bpf_loop` callback costs a call and a return per probe, which on this
/// kind of CPU cost as much as the hash lookup itself).
#[inline(always)]
fn lookup_v4(slot: u32, lengths: &PrefixLengths, table_code: u8, word: u32) -> Option<u32> {
    let mut key = PrefixKeyV4 {
        table: table_code,
        prefix_len: 0,
        pad: 0,
        address: [0; 4],
    };
    for i in 0..=32usize {
        if i >= usize::from(lengths.count) {
            break;
        }
        let length = lengths.lengths[i];
        let mask = match length {
            0 => 0,
            1..=32 => u32::MAX << (32 - u32::from(length)),
            _ => return None,
        };
        key.prefix_len = length;
        key.address = (word & mask).to_be_bytes();
        // SAFETY: the value is copied out at once.
        let found = unsafe {
            if slot == 0 {
                PREFIXES_V4_0.get(&key)
            } else {
                PREFIXES_V4_1.get(&key)
            }
        };
        if let Some(value) = found {
            return Some(*value);
        }
    }
    None
}

/// One probe of [`lookup`]: the `index`-th longest length. Returns 1 to stop.
#[inline(never)]
extern "C" fn probe_length(index: u32, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the Probe that lookup passed in.
    let probe = unsafe { &mut *context.cast::<Probe>() };
    let Some(settings) = SLOT_SETTINGS.get(probe.slot) else {
        return 1;
    };
    let Some(lengths) = settings.lengths.get(probe.lengths_index as usize) else {
        return 1;
    };
    // A u8 index needs no range proof: the array has 255 slots (and the
    // loop runs `count` <= 129 times).
    let Some(&length) = lengths.lengths.get(usize::from(index as u8)) else {
        return 1;
    };
    let Some(mask) = PREFIX_MASKS.get(u32::from(length)) else {
        return 1;
    };
    probe.key.prefix_len = length;
    #[allow(
        clippy::needless_range_loop,
        reason = "one index over the address, the words and the mask; a plain counted loop the verifier bounds at once"
    )]
    for w in 0..4 {
        probe.key.address[w * 4..w * 4 + 4]
            .copy_from_slice(&(probe.words[w] & mask[w]).to_be_bytes());
    }
    // SAFETY: the value is copied out at once.
    let found = unsafe {
        if probe.slot == 0 {
            PREFIXES_0.get(&probe.key)
        } else {
            PREFIXES_1.get(&probe.key)
        }
    };
    match found {
        Some(value) => {
            probe.value = *value;
            probe.hit = 1;
            1
        }
        None => 0,
    }
}

/// An IPv6 address as four big-endian words.
#[inline(always)]
fn address_words(address: &Address) -> [u32; 4] {
    let word =
        |i: usize| u32::from_be_bytes([address[i], address[i + 1], address[i + 2], address[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

#[inline(always)]
fn decide(slot: u32, settings: &SlotSettings, way: u8, packet: &Packet) -> Decision {
    let (table_code, peer, default_deny) = if way == direction::INGRESS {
        (
            table::INGRESS,
            &packet.source,
            settings.ingress_default_deny,
        )
    } else {
        (
            table::EGRESS,
            &packet.destination,
            settings.egress_default_deny,
        )
    };
    let rule_set = match lookup(slot, settings, table_code, packet.family, peer) {
        Some(index) if slot == 0 => RULE_SETS_0.get(index),
        Some(index) => RULE_SETS_1.get(index),
        None => None,
    };
    if let Some(rule_set) = rule_set {
        let len = rule_set.len as usize;
        let port = packet.policy_port();
        for i in 0..MAX_ENTRIES_PER_RULE_SET {
            if i >= len {
                break;
            }
            let entry = &rule_set.entries[i];
            if !protocol_matches(entry.protocol, packet.protocol) {
                continue;
            }
            if port < entry.port_lo || port > entry.port_hi {
                continue;
            }
            return match entry.action {
                action::DENY => drop_or_audit(settings, drop_reason::POLICY_DENY, entry.rule_id),
                action::AUDIT_DENY => audited(drop_reason::POLICY_DENY, entry.rule_id),
                _ => Decision {
                    verdict: verdict::FORWARDED,
                    drop_reason: drop_reason::NONE,
                    rule_id: entry.rule_id,
                },
            };
        }
    }
    if default_deny == default_deny::AUDIT {
        audited(drop_reason::POLICY_DENIED, NO_RULE)
    } else if default_deny != default_deny::OFF {
        drop_or_audit(settings, drop_reason::POLICY_DENIED, NO_RULE)
    } else {
        Decision {
            verdict: verdict::FORWARDED,
            drop_reason: drop_reason::NONE,
            rule_id: NO_RULE,
        }
    }
}

/// Whether the slot holds strict-mode prefixes of this family (WireGuard
/// strict mode is on): one load, so the lookup is only called when it is.
#[inline(always)]
fn strict_mode(settings: &SlotSettings, address_family: u8) -> bool {
    settings
        .lengths
        .get(lengths_index(table::STRICT, address_family))
        .is_some_and(|lengths| lengths.count != 0)
}

/// Whether the peer is in a strict-mode prefix: its traffic must come and
/// go through the tunnel, never in the clear on an enforced interface.
#[inline(never)]
fn unencrypted(slot: u32, settings: &SlotSettings, way: u8, packet: &Packet) -> bool {
    let peer = if way == direction::INGRESS {
        &packet.source
    } else {
        &packet.destination
    };
    lookup(slot, settings, table::STRICT, packet.family, peer).is_some()
}

/// `ALL` (an L3-only rule) matches every IP protocol; `ANY` matches TCP, UDP
/// and SCTP, as Cilium's `protocol: ANY` does.
#[inline(always)]
fn protocol_matches(entry: u8, packet: u8) -> bool {
    entry == packet
        || entry == protocol::ALL
        || (entry == protocol::ANY
            && (packet == protocol::TCP || packet == protocol::UDP || packet == protocol::SCTP))
}

/// Forwarded and reported as AUDIT: what a policy in audit mode would drop.
#[inline(always)]
fn audited(reason: u8, rule_id: u32) -> Decision {
    Decision {
        verdict: verdict::AUDIT,
        drop_reason: reason,
        rule_id,
    }
}

#[inline(always)]
fn drop_or_audit(settings: &SlotSettings, reason: u8, rule_id: u32) -> Decision {
    Decision {
        verdict: if settings.audit != 0 {
            verdict::AUDIT
        } else {
            verdict::DROPPED
        },
        drop_reason: reason,
        rule_id,
    }
}

/// Counts the verdict, reports it, and says whether to drop.
#[inline(never)]
fn finish<F: Frame>(
    frame: &F,
    way: u8,
    packet: &Packet,
    decision: &Decision,
    settings: &SlotSettings,
) -> bool {
    let audit = decision.verdict == verdict::AUDIT;
    let counter = match decision.drop_reason {
        drop_reason::NONE => Some(Counter::Forwarded),
        drop_reason::POLICY_DENY if audit => Some(Counter::AuditedPolicyDeny),
        drop_reason::POLICY_DENY => Some(Counter::DroppedPolicyDeny),
        drop_reason::POLICY_DENIED if audit => Some(Counter::AuditedPolicyDenied),
        drop_reason::POLICY_DENIED => Some(Counter::DroppedPolicyDenied),
        drop_reason::PREFILTER => Some(Counter::DroppedPrefilter),
        drop_reason::FRAG_NOT_FOUND => Some(Counter::DroppedFragment),
        drop_reason::UNENCRYPTED_TRAFFIC => Some(Counter::DroppedUnencrypted),
        // Counted as CtInsertFailed where it happened.
        drop_reason::CT_MAP_INSERTION_FAILED => None,
        _ => Some(Counter::DroppedInvalid),
    };
    let length = frame.length();
    if let Some(counter) = counter {
        bump(way, counter, length);
    }
    let forward = decision.verdict == verdict::FORWARDED;
    if may_report(way, settings, forward) {
        report(frame, way, packet, decision, settings.generation);
    }
    decision.verdict == verdict::DROPPED
}

#[inline(always)]
fn bump(way: u8, counter: Counter, bytes: u32) {
    let index = u32::from(way.saturating_sub(1)) * COUNTER_COUNT + counter as u32;
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
fn count_rule(slot: u32, rule_id: u32, bytes: u32) {
    let value = if slot == 0 {
        RULE_COUNTERS_0.get_ptr_mut(rule_id)
    } else {
        RULE_COUNTERS_1.get_ptr_mut(rule_id)
    };
    if let Some(value) = value {
        // SAFETY: per-CPU slot, no other writer.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += u64::from(bytes);
        }
    }
}

/// Samples forwards (one in `forward_sample_rate`) and applies the per-CPU
/// events-per-second limit; suppressed events are counted.
#[inline(always)]
fn may_report(way: u8, settings: &SlotSettings, forward: bool) -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no other writer.
    let budget = unsafe { &mut *budget };
    if forward {
        let rate = settings.forward_sample_rate;
        if rate == 0 {
            return false;
        }
        budget.forwards = budget.forwards.wrapping_add(1);
        if budget.forwards % rate != 0 {
            return false;
        }
    }
    let limit = settings.events_per_second;
    if limit != 0 {
        if budget.sent >= limit {
            budget.suppressed = budget.suppressed.wrapping_add(1);
            if budget.suppressed % BUDGET_CLOCK_STRIDE != 0 {
                bump(way, Counter::EventsSuppressed, 0);
                return false;
            }
        }
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if now.wrapping_sub(budget.window_start_ns) >= NS_PER_SECOND {
            budget.window_start_ns = now;
            budget.sent = 0;
        }
        if budget.sent >= limit {
            bump(way, Counter::EventsSuppressed, 0);
            return false;
        }
        budget.sent += 1;
    }
    true
}

#[inline(never)]
fn report<F: Frame>(frame: &F, way: u8, packet: &Packet, decision: &Decision, generation: u32) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        bump(way, Counter::EventsLost, 0);
        return;
    };
    // Written field by field into the ring, not built on the small BPF stack.
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation holds one FlowEvent; every field is written
    // before it is submitted.
    unsafe {
        (*event).monotonic_ns = bpf_ktime_get_ns();
        (*event).source = packet.source;
        (*event).destination = packet.destination;
        (*event).rule_id = decision.rule_id;
        (*event).generation = generation;
        (*event).ifindex = frame.ifindex();
        (*event).packet_len = frame.length();
        (*event).source_port = packet.source_port;
        (*event).destination_port = packet.destination_port;
        (*event).ip_version = packet.family;
        (*event).protocol = packet.protocol;
        (*event).verdict = decision.verdict;
        (*event).drop_reason = decision.drop_reason;
        (*event).direction = way;
        (*event).tcp_flags = packet.tcp_flags;
        (*event).icmp_type = packet.icmp_type;
        (*event).icmp_code = packet.icmp_code;
        (*event).pad = 0;
    }
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
