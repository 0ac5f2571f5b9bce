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

/// Offset of the IP header in a frame.
const IP: usize = 14;
/// `nexthdr` values of the IPv6 extension headers used here.
const HOP_BY_HOP: u8 = 0;
const DESTINATION_OPTIONS: u8 = 60;
const FRAGMENT: u8 = 44;

/// `frame` (IPv6, from [`frame`]) with a Hop-by-Hop and a Destination
/// Options header (8 bytes each, PadN) between the IPv6 and the transport
/// header, as a packet walking extension headers meets them.
pub fn with_ipv6_extension_headers(frame: &[u8]) -> Vec<u8> {
    let transport = frame[IP + 6];
    let mut out = frame[..IP + 40].to_vec();
    out[IP + 6] = HOP_BY_HOP;
    let payload = u16::from_be_bytes([out[IP + 4], out[IP + 5]]).saturating_add(16);
    out[IP + 4..IP + 6].copy_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[DESTINATION_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&[transport, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&frame[IP + 40..]);
    out
}

/// A later fragment (offset 1480 bytes, the last) of a datagram whose first
/// fragment was never sent: IPv4 from an IPv4 `frame`, IPv6 (a Fragment
/// header) from an IPv6 one. It carries payload, no transport header.
pub fn orphan_fragment(frame: &[u8], id: u32) -> Vec<u8> {
    let offset_units: u16 = 1480 / 8;
    if frame[IP] >> 4 == 4 {
        let mut out = frame.to_vec();
        out[IP + 4..IP + 6].copy_from_slice(&u16::try_from(id & 0xffff).unwrap_or(0).to_be_bytes());
        out[IP + 6..IP + 8].copy_from_slice(&offset_units.to_be_bytes());
        set_ipv4_checksum(&mut out);
        out
    } else {
        let transport = frame[IP + 6];
        let mut out = frame[..IP + 40].to_vec();
        out[IP + 6] = FRAGMENT;
        let payload = u16::from_be_bytes([out[IP + 4], out[IP + 5]]).saturating_add(8);
        out[IP + 4..IP + 6].copy_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[transport, 0]);
        out.extend_from_slice(&(offset_units << 3).to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&frame[IP + 40..]);
        out
    }
}

/// An IPv4 `frame` whose header length field says 16 bytes (less than the
/// 20 every IPv4 header has).
pub fn short_ipv4_header(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[IP] = 0x44;
    set_ipv4_checksum(&mut out);
    out
}

/// An IPv4 TCP `frame` cut off after 4 bytes of its TCP header.
pub fn truncated_tcp(frame: &[u8]) -> Vec<u8> {
    let header_len = usize::from(frame[IP] & 0x0f) * 4;
    let mut out = frame[..IP + header_len + 4].to_vec();
    let total = u16::try_from(header_len + 4).unwrap_or(u16::MAX);
    out[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
    set_ipv4_checksum(&mut out);
    out
}

/// Writes the destination and source MAC addresses of `frame`.
pub fn set_macs(frame: &mut [u8], destination: [u8; 6], source: [u8; 6]) {
    frame[..6].copy_from_slice(&destination);
    frame[6..12].copy_from_slice(&source);
}

/// Fills in the IPv4 header checksum of an IPv4 `frame`.
pub fn set_ipv4_checksum(frame: &mut [u8]) {
    let header_len = (usize::from(frame[IP] & 0x0f) * 4).max(20);
    frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let checksum = internet_checksum(&frame[IP..IP + header_len]);
    frame[IP + 10..IP + 12].copy_from_slice(&checksum.to_be_bytes());
}

/// The RFC 1071 checksum of `bytes`.
pub(crate) fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}
