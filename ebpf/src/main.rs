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

mod conntrack;
mod frame;
mod maps;
mod parse;
mod policy;
mod prefilter;
mod prefix;
mod report;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use palisade_common::{
    Counter, FAILSAFE_RULE, NO_RULE, SlotSettings, direction, drop_reason, protocol, verdict,
};

use crate::{
    conntrack::{Tracked, open_connection, track},
    frame::Frame,
    maps::{PACKETS, SLOT_SETTINGS, active_slot},
    parse::{Packet, empty_packet, follow_fragment, parse_headers},
    policy::{Decision, decide, drop_or_audit, is_failsafe, strict_mode, unencrypted},
    prefilter::prefilter,
    report::{bump, count_rule, finish},
};

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

/// Whether IPsec protects the packet: ESP on the wire, or a packet one of
/// palisade's inbound states decrypted (their mark), which tunnel mode hands
/// back through the interface. Strict mode lets both pass.
#[inline(always)]
fn ipsec_protected(ctx: &TcContext, packet: &Packet) -> bool {
    // SAFETY: the context points at the kernel's __sk_buff for this program.
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    packet.protocol == protocol::ESP
        || mark & palisade_common::IPSEC_DECRYPTED_MARK_MASK
            == palisade_common::IPSEC_DECRYPTED_MARK
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
    if strict_mode(settings, packet.family)
        && !ipsec_protected(ctx, packet)
        && unencrypted(slot, settings, way, packet)
    {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
