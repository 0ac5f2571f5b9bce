//! Hand-made Ethernet frames for `BPF_PROG_TEST_RUN`: the first packet of a
//! connection, as the differential tests and the benchmarks send it.

use std::net::IpAddr;

use palisade_common::protocol;
use palisade_policy::Connection;

/// An Ethernet frame carrying the first packet of `connection`.
pub fn frame(connection: &Connection) -> Vec<u8> {
    let mut l4 = match connection.protocol {
        protocol::TCP => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&connection.destination_port.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x02; // SYN
            tcp
        }
        protocol::UDP | protocol::SCTP => {
            let mut header = vec![
                0u8;
                if connection.protocol == protocol::UDP {
                    8
                } else {
                    12
                }
            ];
            header[0..2].copy_from_slice(&40000u16.to_be_bytes());
            header[2..4].copy_from_slice(&connection.destination_port.to_be_bytes());
            header
        }
        protocol::ICMP => vec![8, 0, 0, 0, 0, 0, 0, 0],
        protocol::ICMPV6 => vec![128, 0, 0, 0, 0, 0, 0, 0],
        _ => vec![0u8; 8],
    };
    l4.extend_from_slice(b"palisade");
    let mut packet = vec![0u8; 12];
    match (connection.source, connection.destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            packet.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[8] = 64;
            ip[9] = connection.protocol;
            ip[12..16].copy_from_slice(&source.octets());
            ip[16..20].copy_from_slice(&destination.octets());
            packet.extend_from_slice(&ip);
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            packet.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            let payload = u16::try_from(l4.len()).unwrap_or(u16::MAX);
            ip[4..6].copy_from_slice(&payload.to_be_bytes());
            ip[6] = connection.protocol;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&source.octets());
            ip[24..40].copy_from_slice(&destination.octets());
            packet.extend_from_slice(&ip);
        }
        // Mixed families: an IPv4 header with the IPv6 pair cannot exist;
        // the frame ends after Ethernet and the program passes it as non-IP.
        _ => packet.extend_from_slice(&0u16.to_be_bytes()),
    }
    packet.extend_from_slice(&l4);
    packet
}
