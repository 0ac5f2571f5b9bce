//! Hand-made Ethernet frames for `BPF_PROG_TEST_RUN`: the first packet of a
//! connection, as the differential tests and the benchmarks send it.

use std::net::IpAddr;

use palisade_common::protocol;
use palisade_policy::Connection;

/// TCP SYN, the flags of a connection's first packet.
pub const TCP_SYN: u8 = 0x02;
/// TCP SYN+ACK, the flags of the reply to a SYN.
pub const TCP_SYN_ACK: u8 = 0x12;

/// An Ethernet frame carrying the first packet of `connection` from
/// `source_port` (for ICMP: the echo identifier; the type is
/// `connection.destination_port`).
pub fn frame(connection: &Connection, source_port: u16) -> Vec<u8> {
    frame_with_flags(connection, source_port, TCP_SYN)
}

/// As [`frame`], with the given TCP flags.
pub fn frame_with_flags(connection: &Connection, source_port: u16, tcp_flags: u8) -> Vec<u8> {
    let icmp_type = u8::try_from(connection.destination_port).unwrap_or(u8::MAX);
    let [id_hi, id_lo] = source_port.to_be_bytes();
    let mut l4 = match connection.protocol {
        protocol::TCP => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
            tcp[2..4].copy_from_slice(&connection.destination_port.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = tcp_flags;
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
            header[0..2].copy_from_slice(&source_port.to_be_bytes());
            header[2..4].copy_from_slice(&connection.destination_port.to_be_bytes());
            header
        }
        protocol::ICMP | protocol::ICMPV6 => vec![icmp_type, 0, 0, 0, id_hi, id_lo, 0, 1],
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
