//! The maps: the two table slots and the switch between them, conntrack,
//! the flow ring and counters, and accessors that pick a slot's map.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use palisade_common::{
    COUNTED_DIRECTIONS, COUNTER_COUNT, CounterValue, CtEntry, CtKey, DEFAULT_CT_ANY_CAPACITY,
    DEFAULT_CT_TCP_CAPACITY, DEFAULT_PREFIX_CAPACITY, DEFAULT_RULE_CAPACITY,
    DEFAULT_RULE_SET_CAPACITY, EventBudget, FAILSAFE_WORDS, FLOW_RING_BYTES, FRAGMENT_CAPACITY,
    FragmentKey, FragmentPorts, MAX_PREFIX_LENGTHS, PrefixKey, PrefixKeyV4, RuleSet, SLOT_COUNT,
    SlotSettings,
};

use crate::parse::Packet;

#[map]
pub(crate) static ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static SLOT_SETTINGS: Array<SlotSettings> = Array::with_max_entries(SLOT_COUNT, 0);

#[map]
pub(crate) static PREFIXES_0: HashMap<PrefixKey, u32> =
    HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
pub(crate) static PREFIXES_1: HashMap<PrefixKey, u32> =
    HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
pub(crate) static PREFIXES_V4_0: HashMap<PrefixKeyV4, u32> =
    HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
pub(crate) static PREFIXES_V4_1: HashMap<PrefixKeyV4, u32> =
    HashMap::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map]
pub(crate) static RULE_SETS_0: Array<RuleSet> =
    Array::with_max_entries(DEFAULT_RULE_SET_CAPACITY, 0);

#[map]
pub(crate) static RULE_SETS_1: Array<RuleSet> =
    Array::with_max_entries(DEFAULT_RULE_SET_CAPACITY, 0);

#[map]
pub(crate) static RULE_COUNTERS_0: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
pub(crate) static RULE_COUNTERS_1: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DEFAULT_RULE_CAPACITY, 0);

#[map]
pub(crate) static FAILSAFE: Array<u64> = Array::with_max_entries(FAILSAFE_WORDS * SLOT_COUNT, 0);

#[map]
pub(crate) static CT_TCP: LruHashMap<CtKey, CtEntry> =
    LruHashMap::pinned(DEFAULT_CT_TCP_CAPACITY, 0);

#[map]
pub(crate) static CT_ANY: LruHashMap<CtKey, CtEntry> =
    LruHashMap::pinned(DEFAULT_CT_ANY_CAPACITY, 0);

#[map]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::pinned(FRAGMENT_CAPACITY, 0);

#[map]
pub(crate) static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(COUNTER_COUNT * COUNTED_DIRECTIONS, 0);

/// Per-CPU scratch space for the packet being judged, one entry per
/// [`direction`] code. Kept in a map rather than on the stack: the verifier
/// does not track what a map value holds, so the paths through the parser
/// meet again afterwards instead of each walking the rest of the program
/// with its own constants (and the 512-byte stack has room to spare).
#[map]
pub(crate) static PACKETS: PerCpuArray<Packet> =
    PerCpuArray::with_max_entries(COUNTED_DIRECTIONS + 1, 0);

#[map]
pub(crate) static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Address masks by prefix length (userspace fills it at load): entry `n`
/// keeps the first `n` bits of four big-endian words.
#[map]
pub(crate) static PREFIX_MASKS: Array<[u32; 4]> =
    Array::with_max_entries(MAX_PREFIX_LENGTHS as u32, 0);

#[inline(always)]
pub(crate) fn active_slot() -> u32 {
    match ACTIVE_SLOT.get(0) {
        Some(slot) if *slot < SLOT_COUNT => *slot,
        _ => 0,
    }
}

/// The rule set of a prefix in slot `slot`'s IPv6 (and wide) prefix table.
#[inline(always)]
pub(crate) fn prefix_in_slot(slot: u32, key: &PrefixKey) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    let found = unsafe {
        if slot == 0 {
            PREFIXES_0.get(key)
        } else {
            PREFIXES_1.get(key)
        }
    };
    found.copied()
}

/// The rule set of a prefix in slot `slot`'s IPv4 prefix table.
#[inline(always)]
pub(crate) fn prefix_v4_in_slot(slot: u32, key: &PrefixKeyV4) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    let found = unsafe {
        if slot == 0 {
            PREFIXES_V4_0.get(key)
        } else {
            PREFIXES_V4_1.get(key)
        }
    };
    found.copied()
}

/// Rule set `index` of slot `slot`.
#[inline(always)]
pub(crate) fn rule_set_in_slot(slot: u32, index: u32) -> Option<&'static RuleSet> {
    if slot == 0 {
        RULE_SETS_0.get(index)
    } else {
        RULE_SETS_1.get(index)
    }
}

/// This CPU's counter of rule `rule_id` in slot `slot`.
#[inline(always)]
pub(crate) fn rule_counter_in_slot(slot: u32, rule_id: u32) -> Option<*mut CounterValue> {
    if slot == 0 {
        RULE_COUNTERS_0.get_ptr_mut(rule_id)
    } else {
        RULE_COUNTERS_1.get_ptr_mut(rule_id)
    }
}
