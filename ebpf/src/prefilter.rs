//! The XDP prefilter: drops from the prefilter's source prefixes before
//! the stack sees them.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use palisade_common::{
    Counter, SlotSettings, direction, drop_reason, family, lengths_index, protocol, table, verdict,
};

use crate::{
    frame::Frame,
    maps::{SLOT_SETTINGS, active_slot},
    parse::{ETH_HLEN, ETH_P_IPV4, Parsed, empty_packet, parse},
    policy::{Decision, is_failsafe},
    prefix::{lookup, lookup_v4},
    report::{bump, may_report, report},
};

/// The XDP prefilter. IPv4 is judged from its IP header alone (the source,
/// and for the failsafe check the protocol and destination port); the full
/// parser runs for IPv6 and for the few drops that are reported.
pub(crate) fn prefilter(ctx: &XdpContext) -> Result<u32, ()> {
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
pub(crate) fn prefilter_v4(
    ctx: &XdpContext,
    slot: u32,
    settings: &SlotSettings,
) -> Result<Option<u32>, ()> {
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
