//! Reading the eBPF conntrack entries as [`TrackedConnection`]s.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use palisade_common::{Address, CtEntry, CtKey, ct_flag, direction};
use palisade_policy::Direction;

use crate::datapath::{ConnectionState, TrackedConnection};

/// The connection `key`/`entry` describe, in its opener's direction, or
/// `None` once it has expired.
pub fn tracked(key: &CtKey, entry: &CtEntry, now: Duration) -> Option<TrackedConnection> {
    let expires_in = Duration::from_nanos(entry.expires_ns).checked_sub(now)?;
    let key = if entry.flags & ct_flag::KEY_REVERSED != 0 {
        key.reversed()
    } else {
        *key
    };
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

    fn v4_key(source: [u8; 4], source_port: u16, destination: [u8; 4], port: u16) -> CtKey {
        let mapped = |octets: [u8; 4]| {
            let mut address = [0u8; 16];
            address[10..12].copy_from_slice(&[0xff, 0xff]);
            address[12..].copy_from_slice(&octets);
            address
        };
        CtKey {
            source: mapped(source),
            destination: mapped(destination),
            source_port,
            destination_port: port,
            protocol: 6,
            ..CtKey::default()
        }
    }

    #[test]
    fn both_directions_of_a_connection_share_one_canonical_key() {
        let cases = [
            v4_key([10, 0, 0, 1], 40000, [10, 0, 0, 2], 443),
            v4_key([10, 0, 0, 2], 40000, [10, 0, 0, 1], 443),
            v4_key([192, 0, 2, 1], 22, [10, 0, 0, 1], 22),
            // Same addresses: the ports decide.
            v4_key([10, 0, 0, 1], 1, [10, 0, 0, 1], 2),
            v4_key([10, 0, 0, 1], 2, [10, 0, 0, 1], 1),
        ];
        for key in cases {
            let (forward, forward_reversed) = key.canonical();
            let (backward, backward_reversed) = key.reversed().canonical();
            assert_eq!(forward, backward, "{key:?}");
            assert_ne!(forward_reversed, backward_reversed, "{key:?}");
        }
    }

    #[test]
    fn a_reversed_key_is_listed_in_the_openers_direction() {
        let opener = v4_key([10, 0, 0, 9], 40000, [10, 0, 0, 1], 443);
        let (stored, reversed) = opener.canonical();
        assert!(reversed, "10.0.0.9 sorts after 10.0.0.1");
        let entry = CtEntry {
            expires_ns: 5_000_000_000,
            flags: ct_flag::KEY_REVERSED,
            direction: direction::INGRESS,
            ..CtEntry::default()
        };
        let listed = tracked(&stored, &entry, Duration::ZERO).unwrap();
        assert_eq!(listed.source, IpAddr::from([10, 0, 0, 9]));
        assert_eq!(listed.source_port, 40000);
        assert_eq!(listed.destination, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(listed.destination_port, 443);
    }
}
