//! The Cilium-sourced verdict cases of `policy/tests/cilium_cases.toml`:
//! policies with packets and the verdict Cilium gives each. Shared by the
//! evaluator test (policy/tests/cilium_cases.rs) and the datapath test
//! (daemon/src/datapath/differential_tests.rs), so both read one list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_common::{protocol, verdict};
use palisade_policy::{Connection, Direction, Policy, policies_from_yaml};
use serde::Deserialize;

/// The node's own addresses in every case.
pub const NODE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1));
/// The node's IPv6 address.
pub const NODE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));

#[derive(Deserialize)]
struct File {
    case: Vec<CaseText>,
}

#[derive(Deserialize)]
struct CaseText {
    name: String,
    source: String,
    policy: String,
    packets: Vec<PacketText>,
}

#[derive(Deserialize)]
struct PacketText {
    direction: String,
    protocol: String,
    peer: IpAddr,
    port: u16,
    verdict: String,
}

/// One case: Cilium's policy and what Cilium does with each packet.
pub struct Case {
    /// Its name.
    pub name: String,
    /// Where Cilium says so.
    pub source: String,
    /// The policies, parsed and validated.
    pub policies: Vec<Policy>,
    /// Packets (one new connection each) with Cilium's verdict.
    pub packets: Vec<Packet>,
}

/// A packet and Cilium's verdict on it.
pub struct Packet {
    /// Its direction.
    pub direction: Direction,
    /// The connection it opens.
    pub connection: Connection,
    /// `verdict::FORWARDED` or `verdict::DROPPED`.
    pub verdict: u8,
}

/// Every case of the file.
pub fn cases() -> Vec<Case> {
    let file: File = toml::from_str(include_str!("../cilium_cases.toml")).expect("the case file");
    file.case
        .into_iter()
        .map(|case| {
            let policies = policies_from_yaml(&case.name, &case.policy)
                .unwrap_or_else(|problems| panic!("{}: {problems}", case.name));
            let packets = case
                .packets
                .iter()
                .map(|packet| parse_packet(&case.name, packet))
                .collect();
            Case {
                name: case.name,
                source: case.source,
                policies,
                packets,
            }
        })
        .collect()
}

fn parse_packet(case: &str, packet: &PacketText) -> Packet {
    let direction = match packet.direction.as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        other => panic!("{case}: direction {other:?}"),
    };
    let proto = match packet.protocol.as_str() {
        "tcp" => protocol::TCP,
        "udp" => protocol::UDP,
        "sctp" => protocol::SCTP,
        "icmp" => protocol::ICMP,
        "icmpv6" => protocol::ICMPV6,
        other => panic!("{case}: protocol {other:?}"),
    };
    let node = if packet.peer.is_ipv4() {
        NODE_V4
    } else {
        NODE_V6
    };
    let (source, destination) = match direction {
        Direction::Ingress => (packet.peer, node),
        Direction::Egress => (node, packet.peer),
    };
    let verdict = match packet.verdict.as_str() {
        "FORWARDED" => verdict::FORWARDED,
        "DROPPED" => verdict::DROPPED,
        other => panic!("{case}: verdict {other:?}"),
    };
    Packet {
        direction,
        connection: Connection {
            protocol: proto,
            source,
            destination,
            destination_port: packet.port,
        },
        verdict,
    }
}
