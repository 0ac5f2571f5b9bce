//! Reporting: counters, per-rule counters, and flow events under the
//! sampling and rate budget.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use palisade_common::{
    BUDGET_CLOCK_STRIDE, COUNTER_COUNT, Counter, FlowEvent, SlotSettings, drop_reason, verdict,
};

use crate::{
    frame::Frame,
    maps::{COUNTERS, EVENT_BUDGET, FLOW_EVENTS, rule_counter_in_slot},
    parse::Packet,
    policy::Decision,
};

pub(crate) const NS_PER_SECOND: u64 = 1_000_000_000;

/// Counts the verdict, reports it, and says whether to drop.
#[inline(never)]
pub(crate) fn finish<F: Frame>(
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
pub(crate) fn bump(way: u8, counter: Counter, bytes: u32) {
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
pub(crate) fn count_rule(slot: u32, rule_id: u32, bytes: u32) {
    if let Some(value) = rule_counter_in_slot(slot, rule_id) {
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
pub(crate) fn may_report(way: u8, settings: &SlotSettings, forward: bool) -> bool {
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
pub(crate) fn report<F: Frame>(
    frame: &F,
    way: u8,
    packet: &Packet,
    decision: &Decision,
    generation: u32,
) {
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
