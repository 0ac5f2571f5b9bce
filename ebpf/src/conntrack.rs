//! Conntrack: the 5-tuple key in canonical order, lookups and refreshes of
//! tracked connections, ICMP errors about them, and new entries.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, maps::LruHashMap};
use palisade_common::{CtEntry, CtKey, SlotSettings, ct_flag, protocol};

use crate::{
    frame::Frame,
    maps::{CT_ANY, CT_TCP},
    parse::{
        Fragment, ICMP_DEST_UNREACHABLE, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, Packet,
        TCP_FLAG_FIN, TCP_FLAG_RST, mapped_v4,
    },
    policy::Decision,
    report::NS_PER_SECOND,
};

/// How conntrack classified a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tracked {
    /// No live entry: a new connection, to be judged.
    New,
    /// Part of (or an ICMP error about) a tracked connection.
    Known,
}

/// The conntrack key of a packet in its own direction.
#[inline(always)]
pub(crate) fn ct_key(packet: &Packet) -> CtKey {
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
pub(crate) fn ct_table(protocol_number: u8) -> &'static LruHashMap<CtKey, CtEntry> {
    if protocol_number == protocol::TCP {
        &CT_TCP
    } else {
        &CT_ANY
    }
}

/// Looks the packet up in conntrack (one lookup: both directions share the
/// canonical key), refreshing the entry it belongs to.
#[inline(always)]
pub(crate) fn track<F: Frame>(frame: &F, packet: &Packet, settings: &SlotSettings) -> Tracked {
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
pub(crate) fn refresh(
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
pub(crate) fn related_error<F: Frame>(frame: &F, packet: &Packet) -> bool {
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
pub(crate) fn open_connection(
    packet: &Packet,
    way: u8,
    decision: &Decision,
    settings: &SlotSettings,
) -> bool {
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
