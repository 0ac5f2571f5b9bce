//! The policy decision for a new connection: failsafe services, strict
//! mode, the peer prefix's rule set, the direction's default, audit.

use palisade_common::{
    FAILSAFE_WORDS, MAX_ENTRIES_PER_RULE_SET, NO_RULE, SlotSettings, action, default_deny,
    direction, drop_reason, failsafe_bit, lengths_index, protocol, table, verdict,
};

use crate::{
    maps::{FAILSAFE, rule_set_in_slot},
    parse::Packet,
    prefix::lookup,
};

/// The decision for one new connection.
pub(crate) struct Decision {
    pub(crate) verdict: u8,
    pub(crate) drop_reason: u8,
    pub(crate) rule_id: u32,
}

/// Whether the live slot's failsafe list lets a new connection to `port`
/// through, whatever the policy says.
#[inline(always)]
pub(crate) fn is_failsafe(slot: u32, way: u8, protocol: u8, port: u16) -> bool {
    let Some((index, bit)) = failsafe_bit(way, protocol, port) else {
        return false;
    };
    FAILSAFE
        .get(slot * FAILSAFE_WORDS + index)
        .is_some_and(|word| word & bit != 0)
}

#[inline(always)]
pub(crate) fn decide(slot: u32, settings: &SlotSettings, way: u8, packet: &Packet) -> Decision {
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
        Some(index) => rule_set_in_slot(slot, index),
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
pub(crate) fn strict_mode(settings: &SlotSettings, address_family: u8) -> bool {
    settings
        .lengths
        .get(lengths_index(table::STRICT, address_family))
        .is_some_and(|lengths| lengths.count != 0)
}

/// Whether the peer is in a strict-mode prefix: its traffic must come and
/// go through the tunnel, never in the clear on an enforced interface.
#[inline(never)]
pub(crate) fn unencrypted(slot: u32, settings: &SlotSettings, way: u8, packet: &Packet) -> bool {
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
pub(crate) fn protocol_matches(entry: u8, packet: u8) -> bool {
    entry == packet
        || entry == protocol::ALL
        || (entry == protocol::ANY
            && (packet == protocol::TCP || packet == protocol::UDP || packet == protocol::SCTP))
}

/// Forwarded and reported as AUDIT: what a policy in audit mode would drop.
#[inline(always)]
pub(crate) fn audited(reason: u8, rule_id: u32) -> Decision {
    Decision {
        verdict: verdict::AUDIT,
        drop_reason: reason,
        rule_id,
    }
}

#[inline(always)]
pub(crate) fn drop_or_audit(settings: &SlotSettings, reason: u8, rule_id: u32) -> Decision {
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
