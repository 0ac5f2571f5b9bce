//! Prefix lookup: the longest prefix of a table containing an address,
//! one hash probe per prefix length in use (IPv6 under `bpf_loop`).

use aya_ebpf::{cty::c_void, helpers::bpf_loop};
use palisade_common::{
    Address, PrefixKey, PrefixKeyV4, PrefixLengths, SlotSettings, family, lengths_index,
};

use crate::maps::{PREFIX_MASKS, SLOT_SETTINGS, prefix_in_slot, prefix_v4_in_slot};

/// The state of one longest-prefix lookup, shared with [`probe_length`].
#[repr(C)]
pub(crate) struct Probe {
    pub(crate) key: PrefixKey,
    pub(crate) words: [u32; 4],
    pub(crate) slot: u32,
    pub(crate) lengths_index: u32,
    /// The value found (rule-set index or rule id).
    pub(crate) value: u32,
    /// 1 once a prefix matched.
    pub(crate) hit: u32,
}

/// The longest prefix of `table_code` containing `address`: one hash probe
/// per prefix length in use, longest first. IPv4 probes in a bounded loop
/// ([`lookup_v4`]); IPv6, with up to 129 lengths, under `bpf_loop`, so the
/// verifier checks one probe, not one per possible length.
#[inline(always)]
pub(crate) fn lookup(
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
pub(crate) fn lookup_v4(
    slot: u32,
    lengths: &PrefixLengths,
    table_code: u8,
    word: u32,
) -> Option<u32> {
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
        if let Some(value) = prefix_v4_in_slot(slot, &key) {
            return Some(value);
        }
    }
    None
}

/// One probe of [`lookup`]: the `index`-th longest length. Returns 1 to stop.
#[inline(never)]
pub(crate) extern "C" fn probe_length(index: u32, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the Probe that lookup passed in.
    let probe = unsafe { &mut *context.cast::<Probe>() };
    let Some(settings) = SLOT_SETTINGS.get(probe.slot) else {
        return 1;
    };
    let Some(lengths) = settings.lengths.get(probe.lengths_index as usize) else {
        return 1;
    };
    // The loop runs `count` <= 129 times. A u8 index into 256 slots needs
    // no range check: the verifier follows the mask through register
    // copies, where Linux 6.1's loses a compared bound (the check on one
    // copy, the access through another).
    let length = lengths.lengths[usize::from(index as u8)];
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
    match prefix_in_slot(probe.slot, &probe.key) {
        Some(value) => {
            probe.value = value;
            probe.hit = 1;
            1
        }
        None => 0,
    }
}

/// An IPv6 address as four big-endian words.
#[inline(always)]
pub(crate) fn address_words(address: &Address) -> [u32; 4] {
    let word =
        |i: usize| u32::from_be_bytes([address[i], address[i + 1], address[i + 2], address[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}
