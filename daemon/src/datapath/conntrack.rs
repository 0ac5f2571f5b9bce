//! Reading the eBPF conntrack entries as [`TrackedConnection`]s.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use palisade_common::{Address, CtEntry, CtKey, ct_flag, direction};
use palisade_policy::Direction;

use super::{ConnectionState, TrackedConnection};

/// The connection `key`/`entry` describe, or `None` once it has expired.
pub fn tracked(key: &CtKey, entry: &CtEntry, now: Duration) -> Option<TrackedConnection> {
    let expires_in = Duration::from_nanos(entry.expires_ns).checked_sub(now)?;
    let state = if entry.flags & ct_flag::RST != 0
        || entry.flags & (ct_flag::FIN_ORIGINAL | ct_flag::FIN_REPLY)
            == ct_flag::FIN_ORIGINAL | ct_flag::FIN_REPLY
    {
        ConnectionState::Closing
    } else if entry.flags & ct_flag::SEEN_REPLY != 0 {
        ConnectionState::Established
    } else {
        ConnectionState::Opening
    };
    Some(TrackedConnection {
        protocol: key.protocol,
        source: ip(key.source),
        destination: ip(key.destination),
        source_port: key.source_port,
        destination_port: key.destination_port,
        direction: if entry.direction == direction::EGRESS {
            Direction::Egress
        } else {
            Direction::Ingress
        },
        state,
        expires_in,
        rule_id: entry.rule_id,
    })
}

/// An [`Address`] as an IP address (IPv4-mapped addresses as IPv4).
fn ip(address: Address) -> IpAddr {
    let v6 = Ipv6Addr::from(address);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_flags_and_expired_entries_are_gone() {
        let mut key = CtKey::default();
        key.source[10..12].copy_from_slice(&[0xff, 0xff]);
        key.source[12..].copy_from_slice(&[10, 0, 0, 1]);
        let entry = |flags| CtEntry {
            expires_ns: 5_000_000_000,
            flags,
            direction: direction::INGRESS,
            ..CtEntry::default()
        };
        let opened = tracked(&key, &entry(0), Duration::from_secs(1)).unwrap();
        assert_eq!(opened.state, ConnectionState::Opening);
        assert_eq!(opened.source, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(opened.expires_in, Duration::from_secs(4));
        let replied = tracked(&key, &entry(ct_flag::SEEN_REPLY), Duration::ZERO).unwrap();
        assert_eq!(replied.state, ConnectionState::Established);
        let half_closed = tracked(
            &key,
            &entry(ct_flag::SEEN_REPLY | ct_flag::FIN_ORIGINAL),
            Duration::ZERO,
        );
        assert_eq!(half_closed.unwrap().state, ConnectionState::Established);
        let closed = tracked(
            &key,
            &entry(ct_flag::FIN_ORIGINAL | ct_flag::FIN_REPLY),
            Duration::ZERO,
        );
        assert_eq!(closed.unwrap().state, ConnectionState::Closing);
        assert!(tracked(&key, &entry(0), Duration::from_secs(6)).is_none());
    }
}
