//! Parsing: Ethernet, IPv4 / IPv6 (extension headers, fragments) and the
//! L4 header, into a [`Packet`], with named header offsets.

use palisade_common::{Address, FragmentKey, FragmentPorts, family, protocol};

use crate::{frame::Frame, maps::FRAGMENTS};

pub(crate) const ETH_HLEN: usize = 14;

pub(crate) const ETH_P_IPV4: u16 = 0x0800;

pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

pub(crate) const IPV6_HLEN: usize = 40;

pub(crate) const IPPROTO_HOPOPTS: u8 = 0;

pub(crate) const IPPROTO_ROUTING: u8 = 43;

pub(crate) const IPPROTO_FRAGMENT_V6: u8 = 44;

pub(crate) const IPPROTO_DSTOPTS: u8 = 60;

/// Extension headers walked before giving up (the packet is then judged by
/// the last next-header value, as an unknown protocol).
pub(crate) const MAX_IPV6_EXTENSION_HEADERS: usize = 4;

pub(crate) const TCP_FLAG_FIN: u8 = 0x01;

pub(crate) const TCP_FLAG_RST: u8 = 0x04;

pub(crate) const ICMP_ECHO_REPLY: u8 = 0;

pub(crate) const ICMP_DEST_UNREACHABLE: u8 = 3;

pub(crate) const ICMP_ECHO_REQUEST: u8 = 8;

pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;

pub(crate) const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub(crate) const ICMPV6_ECHO_REQUEST: u8 = 128;

pub(crate) const ICMPV6_ECHO_REPLY: u8 = 129;

/// Where a packet sits in a fragmented datagram. Plain fields rather than
/// an enum with data: storing a data-less variant copies its undefined
/// payload, which the verifier refuses as a read of an uninitialised
/// register. The place is computed without branches, so the verifier does
/// not follow one path per place through the rest of the program.
#[derive(Clone, Copy)]
pub(crate) struct Fragment {
    /// One of [`Fragment::WHOLE`], [`Fragment::FIRST`], [`Fragment::LATER`].
    pub(crate) place: u8,
    /// The datagram's identification (meaningless when whole).
    pub(crate) id: u32,
}

impl Fragment {
    /// Not fragmented.
    pub(crate) const WHOLE: u8 = 0;
    /// The first fragment: it carries the L4 header.
    pub(crate) const FIRST: u8 = 1;
    /// A later fragment: no L4 header.
    pub(crate) const LATER: u8 = 2;

    /// The place given by a fragment offset and the more-fragments flag (0 or 1).
    #[inline(always)]
    pub(crate) fn new(offset: u16, more_fragments: u16, id: u32) -> Self {
        // 1 when the offset is not zero.
        let later = (u32::from(offset) + 0xffff) >> 16;
        let first = u32::from(more_fragments & 1) & (later ^ 1);
        Self {
            place: ((later << 1) | first) as u8,
            id,
        }
    }
}

/// What the parser learned about one packet. Aligned so that the addresses
/// are copied by words, not byte by byte.
#[repr(C, align(8))]
pub(crate) struct Packet {
    pub(crate) source: Address,
    pub(crate) destination: Address,
    pub(crate) family: u8,
    pub(crate) protocol: u8,
    pub(crate) source_port: u16,
    pub(crate) destination_port: u16,
    pub(crate) tcp_flags: u8,
    pub(crate) icmp_type: u8,
    pub(crate) icmp_code: u8,
    pub(crate) icmp_id: u16,
    pub(crate) fragment: Fragment,
    pub(crate) l4_offset: usize,
    /// Passes without policy (ICMPv6 that keeps IPv6 working).
    pub(crate) bypass: bool,
}

impl Packet {
    /// What a rule's port range is matched against: the destination port, or
    /// the type for ICMP and ICMPv6.
    #[inline(always)]
    pub(crate) fn policy_port(&self) -> u16 {
        if self.protocol == protocol::ICMP || self.protocol == protocol::ICMPV6 {
            u16::from(self.icmp_type)
        } else {
            self.destination_port
        }
    }
}

#[inline(always)]
pub(crate) fn empty_packet() -> Packet {
    Packet {
        source: [0; 16],
        destination: [0; 16],
        family: 0,
        protocol: 0,
        source_port: 0,
        destination_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
        fragment: Fragment {
            place: Fragment::WHOLE,
            id: 0,
        },
        l4_offset: 0,
        bypass: false,
    }
}

/// What [`parse`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// An IP packet, now in the `Packet`.
    Ip,
    /// Not IP (ARP, LLDP, ...).
    NotIp,
    /// IP headers too short or inconsistent to judge.
    Malformed,
}

/// Parses the frame into `packet` (the XDP prefilter's parser; TC inlines
/// [`parse_headers`]: in the XDP program, inlining it makes LLVM store an
/// uninitialised register, which the verifier refuses).
#[inline(never)]
pub(crate) fn parse<F: Frame>(frame: &F, packet: &mut Packet) -> Parsed {
    match parse_headers(frame, packet) {
        Ok(true) => Parsed::Ip,
        Ok(false) => Parsed::NotIp,
        Err(()) => Parsed::Malformed,
    }
}

#[inline(always)]
pub(crate) fn parse_headers<F: Frame>(frame: &F, packet: &mut Packet) -> Result<bool, ()> {
    let ether_type = u16::from_be(frame.read::<u16>(12)?);
    if ether_type == ETH_P_IPV4 {
        let header: [u8; 20] = frame.read(ETH_HLEN)?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        if header[0] >> 4 != 4 || header_len < 20 {
            return Err(());
        }
        packet.family = family::IPV4;
        packet.protocol = header[9];
        packet.source = mapped_v4([header[12], header[13], header[14], header[15]]);
        packet.destination = mapped_v4([header[16], header[17], header[18], header[19]]);
        let id = u32::from(u16::from_be_bytes([header[4], header[5]]));
        let fragment = u16::from_be_bytes([header[6], header[7]]);
        packet.fragment = Fragment::new(fragment & 0x1fff, fragment >> 13, id);
        packet.l4_offset = ETH_HLEN + header_len;
    } else if ether_type == ETH_P_IPV6 {
        let header: [u8; 8] = frame.read(ETH_HLEN)?;
        if header[0] >> 4 != 6 {
            return Err(());
        }
        packet.family = family::IPV6;
        packet.source = frame.read(ETH_HLEN + 8)?;
        packet.destination = frame.read(ETH_HLEN + 24)?;
        let mut next = header[6];
        let mut offset = ETH_HLEN + IPV6_HLEN;
        // Walk the extension headers to the transport header.
        for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
            match next {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    let extension: [u8; 2] = frame.read(offset)?;
                    next = extension[0];
                    offset += (usize::from(extension[1]) + 1) * 8;
                }
                IPPROTO_FRAGMENT_V6 => {
                    let fragment: [u8; 8] = frame.read(offset)?;
                    next = fragment[0];
                    let id =
                        u32::from_be_bytes([fragment[4], fragment[5], fragment[6], fragment[7]]);
                    let offset_and_more = u16::from_be_bytes([fragment[2], fragment[3]]);
                    packet.fragment = Fragment::new(offset_and_more & 0xfff8, offset_and_more, id);
                    offset += 8;
                }
                _ => break,
            }
        }
        packet.protocol = next;
        packet.l4_offset = offset;
    } else {
        return Ok(false);
    }
    if packet.fragment.place == Fragment::LATER {
        // No L4 header: the ports come from the first fragment.
        return Ok(true);
    }
    let l4 = packet.l4_offset;
    match packet.protocol {
        protocol::TCP => {
            let header: [u8; 14] = frame.read(l4)?;
            packet.source_port = u16::from_be_bytes([header[0], header[1]]);
            packet.destination_port = u16::from_be_bytes([header[2], header[3]]);
            packet.tcp_flags = header[13];
        }
        protocol::UDP | protocol::SCTP => {
            let ports: [u8; 4] = frame.read(l4)?;
            packet.source_port = u16::from_be_bytes([ports[0], ports[1]]);
            packet.destination_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        protocol::ICMP | protocol::ICMPV6 => {
            let header: [u8; 6] = frame.read(l4)?;
            packet.icmp_type = header[0];
            packet.icmp_code = header[1];
            packet.icmp_id = u16::from_be_bytes([header[4], header[5]]);
            packet.bypass =
                packet.protocol == protocol::ICMPV6 && icmpv6_bypasses_policy(packet.icmp_type);
        }
        _ => {}
    }
    Ok(true)
}

/// ICMPv6 types that keep IPv6 working and pass without policy, as in
/// Cilium's host firewall (bpf/lib/icmp6.h, after RFC 4890): errors (1-4),
/// MLD (130-132, 143), neighbour discovery (133-137), inverse ND (141-142),
/// certification path (148-149) and multicast router discovery (151-153).
/// Echo request and reply (128/129) go to conntrack and policy.
#[inline(always)]
pub(crate) fn icmpv6_bypasses_policy(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4 | 130..=137 | 141..=143 | 148..=149 | 151..=153)
}

#[inline(always)]
pub(crate) fn mapped_v4(octets: [u8; 4]) -> Address {
    // Built as one number: a byte array literal with ten zeros becomes a
    // call to a byte-by-byte memset in BPF.
    (0xffff_u128 << 32 | u128::from(u32::from_be_bytes(octets))).to_be_bytes()
}

/// Records a first fragment's ports, or gives a later fragment the ports of
/// its first. False for a later fragment whose first was never seen.
#[inline(always)]
pub(crate) fn follow_fragment(packet: &mut Packet) -> bool {
    if packet.fragment.place == Fragment::WHOLE {
        return true;
    }
    let id = packet.fragment.id;
    let key = FragmentKey {
        source: packet.source,
        destination: packet.destination,
        id,
        protocol: packet.protocol,
        pad: 0,
        pad_wide: 0,
    };
    if packet.fragment.place == Fragment::FIRST {
        let ports = FragmentPorts {
            source_port: packet.source_port,
            destination_port: packet.destination_port,
        };
        // A full table evicts the oldest datagram; its later fragments drop.
        let _ = FRAGMENTS.insert(&key, &ports, 0);
        return true;
    }
    // SAFETY: the value is read at once; a concurrent update at worst gives
    // another fragment's ports of the same datagram, which are equal.
    match unsafe { FRAGMENTS.get(&key) } {
        Some(ports) => {
            packet.source_port = ports.source_port;
            packet.destination_port = ports.destination_port;
            true
        }
        None => false,
    }
}
