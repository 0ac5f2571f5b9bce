//! palisade's kernel programs: the XDP ingress host firewall.
//!
//! Per packet: parse Ethernet / IPv4 or IPv6 / L4, look the source address up
//! in the live slot's prefix trie, scan that prefix's rule set (deny entries
//! first, so the first match decides), and fall back to the slot's default.
//! Only connection-initiating packets are judged (TCP SYN without ACK, any
//! other protocol's packets); see DESIGN.md "Policy semantics".
#![no_std]
#![no_main]
#![allow(
    missing_docs,
    reason = "aya's #[xdp] macro generates an undocumented wrapper function"
)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use palisade_common::{
    Address, COUNTER_COUNT, Counter, CounterValue, DEFAULT_PREFIX_CAPACITY,
    DEFAULT_RULE_SET_CAPACITY, FLOW_RING_BYTES, FlowEvent, MAX_ENTRIES_PER_RULE_SET, NO_RULE,
    RuleSet, SLOT_COUNT, SlotSettings, action, direction, drop_reason, protocol, verdict,
};

#[map]
static ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static SLOT_SETTINGS: Array<SlotSettings> = Array::with_max_entries(SLOT_COUNT, 0);

#[map]
static INGRESS_PREFIXES_0: LpmTrie<Address, u32> =
    LpmTrie::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
static INGRESS_PREFIXES_1: LpmTrie<Address, u32> =
    LpmTrie::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
static INGRESS_RULE_SETS_0: Array<RuleSet> = Array::with_max_entries(DEFAULT_RULE_SET_CAPACITY, 0);

#[map]
static INGRESS_RULE_SETS_1: Array<RuleSet> = Array::with_max_entries(DEFAULT_RULE_SET_CAPACITY, 0);

#[map]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT_V6: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up (the packet is then judged by
/// the last next-header value, as an unknown protocol).
const MAX_IPV6_EXTENSION_HEADERS: usize = 4;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// What the parser learned about one packet.
struct Packet {
    source: Address,
    destination: Address,
    ip_version: u8,
    protocol: u8,
    source_port: u16,
    destination_port: u16,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
    /// Neither a connection-initiating packet nor one policy judges.
    bypass: bool,
}

/// The decision for one packet.
struct Decision {
    verdict: u8,
    drop_reason: u8,
    rule_id: u32,
}

/// XDP entry point: the ingress host firewall.
#[xdp]
pub fn palisade_xdp_ingress(ctx: XdpContext) -> u32 {
    match try_ingress(&ctx) {
        Ok(action) => action,
        // Malformed (truncated) headers: let the stack reject them as it would.
        Err(()) => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn header<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

fn try_ingress(ctx: &XdpContext) -> Result<u32, ()> {
    let Some(packet) = parse(ctx)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    if packet.bypass {
        return Ok(xdp_action::XDP_PASS);
    }
    let slot = match ACTIVE_SLOT.get(0) {
        Some(slot) if *slot < SLOT_COUNT => *slot,
        _ => 0,
    };
    let settings = SLOT_SETTINGS.get(slot).copied().unwrap_or_default();
    let decision = decide(slot, &settings, &packet);
    let deny_rule = decision.drop_reason == drop_reason::POLICY_DENY;
    let counter = match (decision.verdict, deny_rule) {
        (verdict::DROPPED, false) => Counter::DroppedPolicyDenied,
        (verdict::DROPPED, true) => Counter::DroppedPolicyDeny,
        (verdict::AUDIT, false) => Counter::AuditedPolicyDenied,
        (verdict::AUDIT, true) => Counter::AuditedPolicyDeny,
        _ => Counter::Forwarded,
    };
    let packet_len = (ctx.data_end() - ctx.data()) as u32;
    bump(counter, u64::from(packet_len));
    if decision.verdict != verdict::FORWARDED || settings.forward_events != 0 {
        report(ctx, &packet, &decision, settings.generation, packet_len);
    }
    Ok(if decision.verdict == verdict::DROPPED {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    })
}

/// Parses the packet; `None` for traffic that is not IP (ARP and the like pass).
fn parse(ctx: &XdpContext) -> Result<Option<Packet>, ()> {
    let eth: *const EthHdr = header(ctx, 0)?;
    let ether_type = unsafe { (*eth).ether_type };
    let mut packet = Packet {
        source: [0; 16],
        destination: [0; 16],
        ip_version: 0,
        protocol: 0,
        source_port: 0,
        destination_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        bypass: false,
    };
    let l4_offset;
    if ether_type == EtherType::Ipv4 as u16 {
        let ip: *const Ipv4Hdr = header(ctx, EthHdr::LEN)?;
        let ip = unsafe { &*ip };
        packet.ip_version = 4;
        packet.protocol = ip.proto;
        packet.source = mapped_v4(ip.src_addr);
        packet.destination = mapped_v4(ip.dst_addr);
        // Later fragments carry no L4 header; the first fragment was judged and
        // without it the datagram cannot be reassembled.
        let fragment_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
        if fragment_offset != 0 {
            packet.bypass = true;
            return Ok(Some(packet));
        }
        l4_offset = EthHdr::LEN + usize::from(ip.ihl());
    } else if ether_type == EtherType::Ipv6 as u16 {
        let ip: *const Ipv6Hdr = header(ctx, EthHdr::LEN)?;
        let ip = unsafe { &*ip };
        packet.ip_version = 6;
        packet.source = ip.src_addr;
        packet.destination = ip.dst_addr;
        let mut next = ip.next_hdr;
        let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
        // Walk the extension headers to the transport header.
        for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
            match next {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    let ext: *const [u8; 2] = header(ctx, offset)?;
                    let ext = unsafe { *ext };
                    next = ext[0];
                    offset += (usize::from(ext[1]) + 1) * 8;
                }
                IPPROTO_FRAGMENT_V6 => {
                    let fragment: *const [u8; 4] = header(ctx, offset)?;
                    let fragment = unsafe { *fragment };
                    // As for IPv4: only the first fragment carries the ports.
                    if u16::from_be_bytes([fragment[2], fragment[3]]) & 0xfff8 != 0 {
                        packet.protocol = IPPROTO_FRAGMENT_V6;
                        packet.bypass = true;
                        return Ok(Some(packet));
                    }
                    next = fragment[0];
                    offset += 8;
                }
                _ => break,
            }
        }
        packet.protocol = next;
        l4_offset = offset;
    } else {
        return Ok(None);
    }
    match packet.protocol {
        protocol::TCP | protocol::UDP | protocol::SCTP => {
            let ports: *const [u8; 4] = header(ctx, l4_offset)?;
            let ports = unsafe { *ports };
            packet.source_port = u16::from_be_bytes([ports[0], ports[1]]);
            packet.destination_port = u16::from_be_bytes([ports[2], ports[3]]);
            if packet.protocol == protocol::TCP {
                let flags: *const u8 = header(ctx, l4_offset + 13)?;
                packet.tcp_flags = unsafe { *flags };
                // Only a SYN without ACK opens a connection; the rest belongs
                // to one that was judged when it opened.
                packet.bypass = packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN;
            }
        }
        protocol::ICMP | protocol::ICMPV6 => {
            let icmp: *const [u8; 2] = header(ctx, l4_offset)?;
            let icmp = unsafe { *icmp };
            packet.icmp_type = icmp[0];
            packet.icmp_code = icmp[1];
            packet.bypass =
                packet.protocol == protocol::ICMPV6 && icmpv6_bypasses_policy(packet.icmp_type);
        }
        _ => {}
    }
    Ok(Some(packet))
}

/// ICMPv6 types that keep IPv6 working and pass without policy, as in
/// Cilium's host firewall (bpf/lib/icmp6.h, after RFC 4890): errors (1-4),
/// MLD (130-132, 143), neighbour discovery (133-137), inverse ND (141-142),
/// certification path (148-149) and multicast router discovery (151-153).
/// Echo request and reply (128/129) go to policy.
#[inline(always)]
fn icmpv6_bypasses_policy(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4 | 130..=137 | 141..=143 | 148..=149 | 151..=153)
}

#[inline(always)]
fn mapped_v4(octets: [u8; 4]) -> Address {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

fn decide(slot: u32, settings: &SlotSettings, packet: &Packet) -> Decision {
    let key = Key::new(128, packet.source);
    let set_index = if slot == 0 {
        INGRESS_PREFIXES_0.get(&key)
    } else {
        INGRESS_PREFIXES_1.get(&key)
    };
    let rule_set = match set_index {
        Some(index) if slot == 0 => INGRESS_RULE_SETS_0.get(*index),
        Some(index) => INGRESS_RULE_SETS_1.get(*index),
        None => None,
    };
    if let Some(rule_set) = rule_set {
        let len = rule_set.len as usize;
        for i in 0..MAX_ENTRIES_PER_RULE_SET {
            if i >= len {
                break;
            }
            let entry = &rule_set.entries[i];
            if !protocol_matches(entry.protocol, packet.protocol) {
                continue;
            }
            let port = packet.destination_port;
            if port < entry.port_lo || port > entry.port_hi {
                continue;
            }
            return if entry.action == action::DENY {
                drop_or_audit(settings, drop_reason::POLICY_DENY, entry.rule_id)
            } else {
                Decision {
                    verdict: verdict::FORWARDED,
                    drop_reason: drop_reason::NONE,
                    rule_id: entry.rule_id,
                }
            };
        }
    }
    if settings.ingress_default_deny != 0 {
        drop_or_audit(settings, drop_reason::POLICY_DENIED, NO_RULE)
    } else {
        Decision {
            verdict: verdict::FORWARDED,
            drop_reason: drop_reason::NONE,
            rule_id: NO_RULE,
        }
    }
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

#[inline(always)]
fn bump(counter: Counter, bytes: u64) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe {
            (*value).packets += 1;
            (*value).bytes += bytes;
        }
    }
}

fn report(
    ctx: &XdpContext,
    packet: &Packet,
    decision: &Decision,
    generation: u32,
    packet_len: u32,
) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        bump(Counter::EventsLost, 0);
        return;
    };
    entry.write(FlowEvent {
        monotonic_ns: unsafe { bpf_ktime_get_ns() },
        source: packet.source,
        destination: packet.destination,
        rule_id: decision.rule_id,
        generation,
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        packet_len,
        source_port: packet.source_port,
        destination_port: packet.destination_port,
        ip_version: packet.ip_version,
        protocol: packet.protocol,
        verdict: decision.verdict,
        drop_reason: decision.drop_reason,
        direction: direction::INGRESS,
        tcp_flags: packet.tcp_flags,
        icmp_type: packet.icmp_type,
        icmp_code: packet.icmp_code,
        pad: [0; 4],
    });
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
