//! The eBPF datapath against the reference evaluator, packet by packet.
//!
//! Each policy fixture is compiled and installed into a loaded (unattached)
//! XDP program; thousands of generated IPv4 and IPv6 packets are run through
//! it with `BPF_PROG_TEST_RUN`, and the verdict, drop reason and rule id it
//! reports in its flow event must equal what `palisade_policy::evaluate_ingress`
//! says for the same connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    TestRun as _, TestRunOptions,
    maps::{MapData, RingBuf},
};
use palisade_common::{FlowEvent, protocol, verdict};
use palisade_e2e::have_root;
use palisade_policy::{
    CompiledTable, Connection, NodeContext, compile, evaluate_ingress, policy_from_toml,
};

use super::{Datapath as _, ebpf::EbpfDatapath, test_packet::frame};
use crate::flows::decode_event;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const PACKETS_PER_FIXTURE: usize = 4000;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Addresses worth testing for a table: each prefix's first, last and a
/// middle address, the addresses just outside it, and random ones.
fn interesting_sources(table: &CompiledTable, rng: &mut Rng) -> Vec<IpAddr> {
    let mut sources = Vec::new();
    for row in &table.ingress.entries {
        let (network, broadcast) = (row.prefix.network(), row.prefix.broadcast());
        sources.extend([network, broadcast]);
        match (network, broadcast) {
            (IpAddr::V4(lo), IpAddr::V4(hi)) => {
                let (lo, hi) = (u32::from(lo), u32::from(hi));
                sources.push(IpAddr::V4(Ipv4Addr::from(lo + (hi - lo) / 2)));
                sources.push(IpAddr::V4(Ipv4Addr::from(lo.wrapping_sub(1))));
                sources.push(IpAddr::V4(Ipv4Addr::from(hi.wrapping_add(1))));
            }
            (IpAddr::V6(lo), IpAddr::V6(hi)) => {
                let (lo, hi) = (u128::from(lo), u128::from(hi));
                sources.push(IpAddr::V6(Ipv6Addr::from(lo + (hi - lo) / 2)));
                sources.push(IpAddr::V6(Ipv6Addr::from(lo.wrapping_sub(1))));
                sources.push(IpAddr::V6(Ipv6Addr::from(hi.wrapping_add(1))));
            }
            _ => {}
        }
    }
    for _ in 0..64 {
        sources.push(IpAddr::V4(Ipv4Addr::from(
            u32::try_from(rng.next() >> 32).unwrap_or(0),
        )));
        sources.push(IpAddr::V6(Ipv6Addr::from(
            u128::from(rng.next()) << 64 | u128::from(rng.next()),
        )));
    }
    sources
}

fn interesting_ports(table: &CompiledTable, rng: &mut Rng) -> Vec<u16> {
    let mut ports = vec![0, 1, 65535];
    for row in &table.ingress.entries {
        let (lo, hi) = (row.port.port_lo, row.port.port_hi);
        ports.extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)]);
    }
    ports.extend((0..16).map(|_| u16::try_from(rng.next() >> 48).unwrap_or(0)));
    ports
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(decode_event(&item).expect("a whole flow event"));
    }
    events
}

/// Installs `policy_text` and checks `PACKETS_PER_FIXTURE` packets.
fn check_fixture(name: &str, policy_text: &str, audit_mode: bool) {
    let policy = policy_from_toml(name, policy_text).expect("fixture parses");
    let node = NodeContext {
        audit_mode,
        ..NodeContext::default()
    };
    let table = compile(&[policy], &node).expect("fixture compiles");
    let (mut datapath, mut ring) = EbpfDatapath::load(true).expect("eBPF loads");
    datapath.install(&table, 7).expect("table installs");
    let program = datapath.xdp_program().expect("XDP program");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let sources = interesting_sources(&table, &mut rng);
    let ports = interesting_ports(&table, &mut rng);
    let protocols = [
        protocol::TCP,
        protocol::UDP,
        protocol::SCTP,
        protocol::ICMP,
        47, // GRE: no ports
    ];
    let mut seen = [0usize; 5];
    for i in 0..PACKETS_PER_FIXTURE {
        let source = rng.pick(&sources);
        let mut proto = rng.pick(&protocols);
        let destination = match source {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
            IpAddr::V6(_) => {
                if proto == protocol::ICMP {
                    proto = protocol::ICMPV6;
                }
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
            }
        };
        let has_ports = matches!(proto, protocol::TCP | protocol::UDP | protocol::SCTP);
        let connection = Connection {
            protocol: proto,
            source,
            destination,
            destination_port: if has_ports { rng.pick(&ports) } else { 0 },
        };
        let expected = evaluate_ingress(&table, &connection);
        let data = frame(&connection);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        let events = drain(&mut ring);
        let context = format!("{name} packet {i}: {connection:?}, evaluator says {expected:?}");
        assert_eq!(
            events.len(),
            1,
            "{context}: one flow event per judged packet"
        );
        let event = events[0];
        assert_eq!(
            (
                event.verdict,
                event.drop_reason,
                event.rule_id,
                event.generation
            ),
            (expected.verdict, expected.drop_reason, expected.rule_id, 7),
            "{context}: the kernel reported {event:?}"
        );
        let action = if expected.verdict == verdict::DROPPED {
            XDP_DROP
        } else {
            XDP_PASS
        };
        assert_eq!(result.return_value, action, "{context}");
        seen[usize::from(expected.verdict).min(4)] += 1;
    }
    // The generator must exercise more than one outcome, or the test proves little.
    let outcomes = seen.iter().filter(|count| **count > 0).count();
    assert!(
        outcomes >= 2,
        "{name}: only one verdict was ever produced: {seen:?}"
    );
}

#[test]
fn example_policy_matches_the_evaluator() {
    if !have_root("example_policy_matches_the_evaluator") {
        return;
    }
    let text = include_str!("../../../etc/policies.d/host-ssh-from-bastion.toml");
    check_fixture("example", text, false);
}

const LAYERED: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "layered" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8", "2001:db8::/32"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }, { port = 8000, endPort = 8099 }] }]
[[spec.ingress]]
fromCIDR = ["10.1.0.0/16", "2001:db8:1::/48"]
toPorts = [{ ports = [{ port = 53, protocol = "UDP" }, { port = 9000, protocol = "SCTP" }] }]
[[spec.ingress]]
fromCIDR = ["192.0.2.0/24"]
[[spec.ingressDeny]]
fromCIDR = ["10.1.2.0/24", "2001:db8:1:2::/64"]
[[spec.ingressDeny]]
fromCIDR = ["10.0.0.0/8"]
toPorts = [{ ports = [{ port = 8050, endPort = 8059, protocol = "TCP" }] }]
[[spec.ingressDeny]]
fromCIDR = ["192.0.2.128/25"]
toPorts = [{ ports = [{ port = 0, protocol = "UDP" }] }]
"#;

#[test]
fn nested_allow_and_deny_prefixes_match_the_evaluator() {
    if !have_root("nested_allow_and_deny_prefixes_match_the_evaluator") {
        return;
    }
    check_fixture("layered", LAYERED, false);
}

#[test]
fn audit_mode_matches_the_evaluator() {
    if !have_root("audit_mode_matches_the_evaluator") {
        return;
    }
    check_fixture("layered-audit", LAYERED, true);
}

#[test]
fn wildcard_peers_and_ipv6_default_route_match_the_evaluator() {
    if !have_root("wildcard_peers_and_ipv6_default_route_match_the_evaluator") {
        return;
    }
    // An L4-only rule (every source), an IPv6 ::/0 allow that must not leak
    // into IPv4, and an IPv4 deny inside.
    let text = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "wildcards" }
[spec]
nodeSelector = {}
[[spec.ingress]]
toPorts = [{ ports = [{ port = 443, protocol = "TCP" }] }]
[[spec.ingress]]
fromCIDR = ["::/0"]
[[spec.ingressDeny]]
fromCIDR = ["203.0.113.0/24"]
toPorts = [{ ports = [{ port = 443 }] }]
"#;
    check_fixture("wildcards", text, false);
}

#[test]
fn ipv6_default_route_does_not_apply_to_ipv4() {
    if !have_root("ipv6_default_route_does_not_apply_to_ipv4") {
        return;
    }
    // IPv4 lives inside ::/0 in the kernel's trie (as ::ffff:a.b.c.d); an
    // IPv4 packet must still find no rule here but the /24.
    let text = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "v6-only" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["::/0", "198.51.100.0/24"]
"#;
    check_fixture("v6-only", text, false);
}
