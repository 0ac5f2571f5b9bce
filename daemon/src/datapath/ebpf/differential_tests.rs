//! The eBPF datapath against the reference evaluator, packet by packet.
//!
//! Each policy fixture is compiled and installed into loaded (unattached)
//! programs; thousands of generated IPv4 and IPv6 connections are run through
//! the XDP prefilter and the TC ingress program, and others through the TC
//! egress program, with `BPF_PROG_TEST_RUN`. The action, and the verdict,
//! drop reason and rule id each program reports in its flow event, must equal
//! what `palisade_policy::evaluate` says for the same connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    TestRun as _, TestRunOptions,
    maps::{MapData, RingBuf},
};
use palisade_common::{FlowEvent, drop_reason, protocol, verdict};
use palisade_e2e::require_root;
use palisade_policy::{
    CompiledTable, Connection, Direction, NodeContext, compile, evaluate, policy_from_toml,
};

use palisade_e2e::frames::frame;

use super::{EbpfDatapath, events::decode_event};
use crate::{config::Config, datapath::Datapath as _};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC` (-1): pass on to the next program or the stack.
pub(crate) const TC_PASS: u32 = u32::MAX;
/// `TC_ACT_SHOT`.
pub(crate) const TC_DROP: u32 = 2;
const PACKETS_PER_FIXTURE: usize = 4000;

/// A bpffs directory of one test's own, removed when dropped.
pub(crate) struct TestPins(pub(crate) std::path::PathBuf);

impl TestPins {
    pub(crate) fn new(name: &str) -> Self {
        // bpffs refuses names with dots.
        let path = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/palisade-test-{}-{}",
            std::process::id(),
            name.replace('.', "-")
        ));
        Self(path)
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config for loading the programs in a test: its own pin directory, no
/// failsafe services, every event delivered.
pub(crate) fn test_config(pins: &TestPins) -> Config {
    let mut config = Config::default();
    config.datapath.pin_path.clone_from(&pins.0);
    config.failsafe.inbound.clear();
    config.failsafe.outbound.clear();
    config.flows.events_per_second = 0;
    config
}

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
fn interesting_peers(table: &CompiledTable, rng: &mut Rng) -> Vec<IpAddr> {
    let mut sources = Vec::new();
    let prefixes = table
        .ingress
        .entries
        .iter()
        .chain(&table.egress.entries)
        .map(|row| row.prefix)
        .chain(table.prefilter.iter().map(|entry| entry.prefix));
    for prefix in prefixes {
        let (network, broadcast) = (prefix.network(), prefix.broadcast());
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
    for row in table.ingress.entries.iter().chain(&table.egress.entries) {
        let (lo, hi) = (row.port.port_lo, row.port.port_hi);
        ports.extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)]);
    }
    ports.extend((0..16).map(|_| u16::try_from(rng.next() >> 48).unwrap_or(0)));
    ports
}

/// What conntrack keys a connection's first packet by, as the programs do:
/// ports for TCP, UDP and SCTP, the identifier for ICMP echo, nothing else
/// for the rest.
fn ct_key(connection: &Connection, source_port: u16) -> (IpAddr, IpAddr, u8, u16, u16) {
    let ports = match (connection.protocol, connection.destination_port) {
        (protocol::TCP | protocol::UDP | protocol::SCTP, port) => (source_port, port),
        (protocol::ICMP, 8) | (protocol::ICMPV6, 128) => (source_port, 0),
        (protocol::ICMP, 0) | (protocol::ICMPV6, 129) => (0, source_port),
        _ => (0, 0),
    };
    (
        connection.source,
        connection.destination,
        connection.protocol,
        ports.0,
        ports.1,
    )
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(decode_event(&item).expect("a whole flow event"));
    }
    events
}

/// ICMP types a generated ICMP or ICMPv6 packet may have (none of the
/// ICMPv6 types that bypass policy).
const ICMP_TYPES: [u16; 5] = [0, 3, 8, 11, 13];
const ICMPV6_TYPES: [u16; 4] = [128, 129, 139, 200];

/// Installs `policy_text` and checks `PACKETS_PER_FIXTURE` packets each way.
fn check_fixture(name: &str, policy_text: &str, audit_mode: bool) {
    check_policies(name, &[policy_text], audit_mode);
}

/// Installs the policies in `texts` together and checks
/// `PACKETS_PER_FIXTURE` packets each way.
fn check_policies(name: &str, texts: &[&str], audit_mode: bool) {
    let node = NodeContext {
        audit_mode,
        ..NodeContext::default()
    };
    check_on_node(name, texts, &node);
}

/// Installs the policies in `texts` compiled for `node` and checks
/// `PACKETS_PER_FIXTURE` packets each way.
fn check_on_node(name: &str, texts: &[&str], node: &NodeContext) {
    let policies: Vec<_> = texts
        .iter()
        .map(|text| policy_from_toml(name, text).expect("fixture parses"))
        .collect();
    check_policies_on_node(name, &policies, node);
}

/// Installs `policies` compiled for `node` and checks
/// `PACKETS_PER_FIXTURE` packets each way.
fn check_policies_on_node(name: &str, policies: &[palisade_policy::Policy], node: &NodeContext) {
    let table = compile(policies, node).expect("fixture compiles");
    for direction in [Direction::Ingress, Direction::Egress] {
        check_direction(name, &table, direction);
    }
}

fn check_direction(name: &str, table: &CompiledTable, direction: Direction) {
    let pins = TestPins::new(&format!("{name}-{direction:?}"));
    let (mut datapath, mut ring) = EbpfDatapath::load(&test_config(&pins)).expect("eBPF loads");
    datapath.install(table, 7).expect("table installs");
    let tc = datapath.tc_program(direction).expect("TC program");
    let xdp = datapath.xdp_program().expect("XDP program");
    // TC never sees what the prefilter dropped; it judges with the rows alone.
    let mut rows_only = table.clone();
    rows_only.prefilter.clear();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64 ^ direction as u64);
    let peers = interesting_peers(table, &mut rng);
    let ports = interesting_ports(table, &mut rng);
    let protocols = [
        protocol::TCP,
        protocol::UDP,
        protocol::SCTP,
        protocol::ICMP,
        47, // GRE: a protocol without ports, judged by L3 rules only
    ];
    let local_v4 = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1));
    let local_v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let mut seen = [0usize; 5];
    // Conntrack keys of the connections let through so far: a packet of one
    // of them is known and passes unjudged (without a flow event).
    let mut opened = std::collections::HashSet::new();
    let rows = &table.direction(direction).entries;
    for i in 0..PACKETS_PER_FIXTURE {
        // Half the packets aim at one row (its prefix, protocol and ports),
        // so a narrow rule among wide defaults is hit too.
        let aimed = (!rows.is_empty() && rng.below(2) == 0).then(|| rng.pick(rows));
        let peer = aimed.map_or_else(|| rng.pick(&peers), |row| row.prefix.network());
        let mut proto = match aimed.map(|row| row.port.protocol) {
            Some(protocol::ALL) | None => rng.pick(&protocols),
            Some(protocol::ANY) => rng.pick(&protocols[..3]),
            Some(code) => code,
        };
        let local = if peer.is_ipv4() { local_v4 } else { local_v6 };
        if peer.is_ipv6() && proto == protocol::ICMP {
            proto = protocol::ICMPV6;
        }
        let (source, destination) = match direction {
            Direction::Ingress => (peer, local),
            Direction::Egress => (local, peer),
        };
        let destination_port = match (proto, aimed) {
            (
                protocol::TCP | protocol::UDP | protocol::SCTP | protocol::ICMP | protocol::ICMPV6,
                Some(row),
            ) if row.port.protocol == proto => row.port.port_lo,
            (protocol::TCP | protocol::UDP | protocol::SCTP, _) => rng.pick(&ports),
            (protocol::ICMP, _) => rng.pick(&ICMP_TYPES),
            (protocol::ICMPV6, _) => rng.pick(&ICMPV6_TYPES),
            _ => 0,
        };
        let connection = Connection {
            protocol: proto,
            source,
            destination,
            destination_port,
        };
        // A source port (or echo id) of its own: every packet with ports
        // opens a new connection.
        let source_port = 1024 + u16::try_from(i).unwrap_or(0);
        let data = frame(&connection, source_port);
        let key = ct_key(&connection, source_port);
        let run = |program: &dyn Fn(TestRunOptions<'_>) -> u32| {
            program(TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::default()
            })
        };
        if direction == Direction::Ingress {
            let expected = evaluate(table, direction, &connection);
            let action = run(&|options| xdp.test_run(options).expect("XDP test run").return_value);
            let events = drain(&mut ring);
            let context =
                format!("{name} XDP packet {i}: {connection:?}, evaluator says {expected:?}");
            if expected.drop_reason == drop_reason::PREFILTER {
                assert_eq!(action, XDP_DROP, "{context}");
                assert_eq!(
                    events.len(),
                    1,
                    "{context}: one flow event per prefilter drop"
                );
                assert_eq!(
                    (events[0].verdict, events[0].drop_reason, events[0].rule_id),
                    (expected.verdict, expected.drop_reason, expected.rule_id),
                    "{context}: the kernel reported {:?}",
                    events[0]
                );
                seen[0] += 1;
            } else {
                assert_eq!((action, events.len()), (XDP_PASS, 0), "{context}");
            }
        }
        let expected = evaluate(&rows_only, direction, &connection);
        let action = run(&|options| tc.test_run(options).expect("TC test run").return_value);
        let events = drain(&mut ring);
        let context = format!(
            "{name} TC {direction:?} packet {i}: {connection:?}, evaluator says {expected:?}"
        );
        if opened.contains(&key) {
            assert_eq!(
                (action, events.len()),
                (TC_PASS, 0),
                "{context}: a tracked connection"
            );
            continue;
        }
        if expected.verdict != verdict::DROPPED {
            opened.insert(key);
        }
        assert_eq!(
            events.len(),
            1,
            "{context}: one flow event per new connection"
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
        let wanted = if expected.verdict == verdict::DROPPED {
            TC_DROP
        } else {
            TC_PASS
        };
        assert_eq!(action, wanted, "{context}");
        seen[usize::from(expected.verdict).min(4)] += 1;
    }
    // The generator must exercise more than one outcome where the direction
    // has rules, or the test proves little.
    let outcomes = seen.iter().filter(|count| **count > 0).count();
    let has_rules = !table.direction(direction).entries.is_empty();
    assert!(
        outcomes >= 2 || !has_rules,
        "{name} {direction:?}: only one verdict was ever produced: {seen:?}"
    );
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn example_policy_matches_the_evaluator() {
    require_root();
    let text = include_str!("../../../../etc/policies.d/host-ssh-from-bastion.toml");
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
[[spec.egress]]
toCIDR = ["10.0.0.0/8", "2001:db8::/32"]
toPorts = [{ ports = [{ port = 443, protocol = "TCP" }, { port = 53, protocol = "UDP" }] }]
[[spec.egress]]
toCIDR = ["192.0.2.0/24"]
[[spec.egress]]
icmps = [{ fields = [{ type = 8 }, { family = "IPv6", type = "EchoRequest" }] }]
[[spec.egressDeny]]
toCIDR = ["10.1.2.0/24", "2001:db8:1:2::/64"]
toPorts = [{ ports = [{ port = 443 }] }]
"#;

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn nested_allow_and_deny_prefixes_match_the_evaluator() {
    require_root();
    check_fixture("layered", LAYERED, false);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn audit_mode_matches_the_evaluator() {
    require_root();
    check_fixture("layered-audit", LAYERED, true);
}

/// Enforced beside [`LAYERED`] in audit mode: its deny rows win over the
/// audited ones, and it makes ingress (not egress) default deny for real.
const ENFORCED_BESIDE_AUDITED: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "enforced" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.2.0.0/16"]
[[spec.ingressDeny]]
fromCIDR = ["10.1.2.0/25", "2001:db8:1:2::/65"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
"#;

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_policy_in_audit_mode_beside_an_enforced_one_matches_the_evaluator() {
    require_root();
    let audited = LAYERED.replace(
        "metadata = { name = \"layered\" }",
        "metadata = { name = \"layered\", annotations = { \"cilium.io/policy-audit-mode\" = \"true\" } }",
    );
    assert_ne!(audited, LAYERED);
    let table = compile(
        &[
            policy_from_toml("a", &audited).expect("parses"),
            policy_from_toml("e", ENFORCED_BESIDE_AUDITED).expect("parses"),
        ],
        &NodeContext::default(),
    )
    .expect("compiles");
    assert!(table.egress.default_deny_audited && !table.ingress.default_deny_audited);
    check_policies("audited", &[&audited, ENFORCED_BESIDE_AUDITED], false);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn wireguard_strict_mode_matches_the_evaluator() {
    require_root();
    let node = NodeContext {
        strict_prefixes: vec![
            "10.1.0.0/16".parse().expect("a prefix"),
            "2001:db8:1::/48".parse().expect("a prefix"),
        ],
        ..NodeContext::default()
    };
    check_on_node("strict", &[LAYERED], &node);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn wildcard_peers_and_ipv6_default_route_match_the_evaluator() {
    require_root();
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
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn icmp_type_rules_match_the_evaluator() {
    require_root();
    let text = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "icmp" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8"]
icmps = [{ fields = [{ type = "EchoRequest" }, { type = 13 }] }]
[[spec.ingress]]
fromCIDR = ["2001:db8::/32"]
icmps = [{ fields = [{ family = "IPv6", type = 128 }] }]
[[spec.ingress]]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
[[spec.ingressDeny]]
fromCIDR = ["10.9.0.0/16"]
icmps = [{ fields = [{ type = 8 }] }]
[[spec.egress]]
toCIDR = ["10.0.0.0/8", "2001:db8::/32"]
[[spec.egressDeny]]
icmps = [{ fields = [{ type = "Timestamp" }] }]
"#;
    check_fixture("icmp", text, false);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn ipv6_default_route_does_not_apply_to_ipv4() {
    require_root();
    // IPv4 travels as ::ffff:a.b.c.d inside the programs; an IPv4 packet
    // must still find no rule here but the /24.
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

#[path = "../../../../policy/tests/support/cilium_cases.rs"]
mod cilium_cases;

/// The programs against verdicts taken from Cilium's own sources
/// (policy/tests/cilium_cases.toml), not from the evaluator: the XDP
/// prefilter and the TC program of the packet's direction together must
/// forward or drop each packet as Cilium does, and report that verdict.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn the_programs_give_cilium_s_verdicts() {
    require_root();
    let mut failures = Vec::new();
    for case in cilium_cases::cases() {
        let table = compile(&case.policies, &NodeContext::default())
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        let pins = TestPins::new(&format!("cilium-{}", case.name));
        let (mut datapath, mut ring) = EbpfDatapath::load(&test_config(&pins)).expect("eBPF loads");
        datapath.install(&table, 7).expect("table installs");
        let xdp = datapath.xdp_program().expect("XDP program");
        for (i, packet) in case.packets.iter().enumerate() {
            let data = frame(&packet.connection, 40_000 + u16::try_from(i).unwrap_or(0));
            let options = || TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::default()
            };
            let prefiltered = packet.direction == Direction::Ingress
                && xdp.test_run(options()).expect("XDP test run").return_value == XDP_DROP;
            let action = if prefiltered {
                TC_DROP
            } else {
                let tc = datapath.tc_program(packet.direction).expect("TC program");
                tc.test_run(options()).expect("TC test run").return_value
            };
            let events = drain(&mut ring);
            let reported = events.first().map(|event| event.verdict);
            let dropped = action == TC_DROP;
            if dropped != (packet.verdict == verdict::DROPPED) || reported != Some(packet.verdict) {
                failures.push(format!(
                    "{}: {:?} {:?}: Cilium says {}, the programs {} (flow events {events:?})\n  source: {}",
                    case.name,
                    packet.direction,
                    packet.connection,
                    verdict::name(packet.verdict),
                    if dropped { "dropped it" } else { "passed it" },
                    case.source
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Packets the README says the programs handle, crafted as a hostile or
/// broken sender would: IPv6 extension headers are walked to the transport
/// header (the verdict is the evaluator's for the connection), a later
/// fragment without its first is dropped as `FRAG_NOT_FOUND`, malformed
/// IPv4 headers as `INVALID_PACKET`.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn extension_headers_orphan_fragments_and_malformed_headers_get_their_verdicts() {
    use palisade_e2e::frames::{
        orphan_fragment, short_ipv4_header, truncated_tcp, with_ipv6_extension_headers,
    };
    require_root();
    let policy = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "ssh" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8", "2001:db8::/32"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
"#;
    let table = compile(
        &[policy_from_toml("ssh", policy).expect("parses")],
        &NodeContext::default(),
    )
    .expect("compiles");
    let pins = TestPins::new("hostile-frames");
    let (mut datapath, mut ring) = EbpfDatapath::load(&test_config(&pins)).expect("eBPF loads");
    datapath.install(&table, 7).expect("table installs");
    let tc = datapath.tc_program(Direction::Ingress).expect("TC program");
    let node_v4 = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1));
    let node_v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let ssh = |source: &str| {
        let source: IpAddr = source.parse().expect("an address");
        Connection {
            protocol: protocol::TCP,
            source,
            destination: if source.is_ipv4() { node_v4 } else { node_v6 },
            destination_port: 22,
        }
    };
    let evaluated = |connection: &Connection| {
        let verdict = evaluate(&table, Direction::Ingress, connection);
        (verdict.verdict, verdict.drop_reason)
    };
    let cases: Vec<(&str, Vec<u8>, (u8, u8))> = vec![
        (
            "IPv6 Hop-by-Hop + Destination Options, allowed source",
            with_ipv6_extension_headers(&frame(&ssh("2001:db8::7"), 40_001)),
            evaluated(&ssh("2001:db8::7")),
        ),
        (
            "IPv6 Hop-by-Hop + Destination Options, other source",
            with_ipv6_extension_headers(&frame(&ssh("2001:dead::7"), 40_002)),
            evaluated(&ssh("2001:dead::7")),
        ),
        (
            "IPv4 later fragment without its first",
            orphan_fragment(&frame(&ssh("10.1.1.1"), 40_003), 0x4242),
            (verdict::DROPPED, drop_reason::FRAG_NOT_FOUND),
        ),
        (
            "IPv6 later fragment without its first",
            orphan_fragment(&frame(&ssh("2001:db8::8"), 40_004), 0x4243),
            (verdict::DROPPED, drop_reason::FRAG_NOT_FOUND),
        ),
        (
            "IPv4 header length 16",
            short_ipv4_header(&frame(&ssh("10.1.1.2"), 40_005)),
            (verdict::DROPPED, drop_reason::INVALID_PACKET),
        ),
        (
            "IPv4 TCP header cut short",
            truncated_tcp(&frame(&ssh("10.1.1.3"), 40_006)),
            (verdict::DROPPED, drop_reason::INVALID_PACKET),
        ),
    ];
    assert_eq!(cases[0].2.0, verdict::FORWARDED, "the allowed case allows");
    assert_eq!(cases[1].2, (verdict::DROPPED, drop_reason::POLICY_DENIED));
    for (name, data, (wanted_verdict, wanted_reason)) in cases {
        let action = tc
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::default()
            })
            .expect("TC test run")
            .return_value;
        let events = drain(&mut ring);
        let wanted_action = if wanted_verdict == verdict::DROPPED {
            TC_DROP
        } else {
            TC_PASS
        };
        assert_eq!(action, wanted_action, "{name}: events {events:?}");
        assert_eq!(events.len(), 1, "{name}: one flow event: {events:?}");
        assert_eq!(
            (events[0].verdict, events[0].drop_reason),
            (wanted_verdict, wanted_reason),
            "{name}: {:?}",
            events[0]
        );
    }
}

#[path = "../../../../policy/tests/support/mod.rs"]
mod cilium_examples;

/// Every host policy among Cilium's own examples (policy/tests/fixtures),
/// compiled for the node the policy tests use, through the programs: the
/// same verdicts as the evaluator, packet by packet.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn every_host_example_of_cilium_matches_the_evaluator() {
    require_root();
    let mut checked = 0;
    for fixture in cilium_examples::fixtures() {
        let Ok(policies) = palisade_policy::policies_from_text(
            &fixture.name,
            &cilium_examples::filled_in(&fixture.text),
        ) else {
            continue;
        };
        if !cilium_examples::has_host_rules(&policies) {
            continue;
        }
        let node = cilium_examples::node_for(&policies);
        check_policies_on_node(&fixture.name, &policies, &node);
        checked += 1;
    }
    assert_eq!(checked, 14, "every host example checked");
}
