//! The differential harness: generated packets through a datapath backend
//! and through the reference evaluator (`palisade_policy::evaluate`), packet
//! by packet. A backend takes part by implementing [`FrameJudge`] (the eBPF
//! backend's is in `ebpf/differential_tests.rs`); the corpora, the
//! conntrack expectations and the comparison are the same for every backend.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fastrand::Rng;
use palisade_common::{drop_reason, protocol, verdict};
use palisade_policy::{
    CompileError, CompiledTable, Connection, Direction, NodeContext, Policy, TableCompiler,
    evaluate, policy_from_toml,
};

use palisade_e2e::frames::frame;

/// Packets generated per fixture and direction.
const PACKETS_PER_FIXTURE: usize = 4000;
/// The generation the harness installs tables as.
pub(crate) const GENERATION: u32 = 7;

/// A flow a backend reported for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    /// Verdict code (`palisade_common::verdict`).
    pub(crate) verdict: u8,
    /// Drop reason code (`palisade_common::drop_reason`).
    pub(crate) drop_reason: u8,
    /// The rule that decided, or `NO_RULE`.
    pub(crate) rule_id: u32,
    /// The table generation that decided.
    pub(crate) generation: u32,
}

/// What a backend did with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Judgement {
    /// Whether the frame went on (to the stack or the next hook).
    pub(crate) passed: bool,
    /// The flows it reported for the frame.
    pub(crate) reports: Vec<Report>,
}

/// A datapath backend as the harness drives it: a table installed, frames
/// judged one at a time, with the backend's own connection tracking.
pub(crate) trait FrameJudge: Sized {
    /// A fresh backend (empty connection tables) with `previous` installed
    /// as the two generations before `generation` and then `table` as
    /// `generation` (whose changes lead from `previous`: a backend that
    /// writes only changes writes them over a table that held something
    /// else); `name` keeps its kernel state apart from other tests'.
    fn with_table(
        name: &str,
        previous: &CompiledTable,
        table: &CompiledTable,
        generation: u32,
    ) -> Self;
    /// The prefilter hook's judgement of an arriving frame.
    fn prefilter(&mut self, frame: &[u8]) -> Judgement;
    /// The filter hook's judgement of a frame crossing `direction`.
    fn filter(&mut self, direction: Direction, frame: &[u8]) -> Judgement;
}

/// The table installed before the one under test: stale prefixes, rule
/// sets and defaults of it must all be gone or rewritten.
const PREVIOUS: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "previous" }
[spec]
nodeSelector = {}
[[spec.ingressDeny]]
fromCIDR = ["10.0.0.0/8", "2001:db8::/32"]
toPorts = [{ ports = [{ port = "22", protocol = "TCP" }] }]
[[spec.ingress]]
fromCIDR = ["0.0.0.0/0", "::/0"]
[[spec.egress]]
toCIDR = ["192.0.2.0/24", "fd00::/8"]
toPorts = [{ ports = [{ port = "53", protocol = "UDP" }] }]
[[spec.egressDeny]]
toCIDR = ["0.0.0.0/1"]
"#;

/// [`PREVIOUS`] compiled for `node`, and `policies` compiled after it by
/// the same compiler (so the second table's changes lead from the first,
/// and its rule ids are those a running node would give).
///
/// # Errors
///
/// When `policies` do not compile.
pub(crate) fn compiled_after_previous(
    policies: &[Policy],
    node: &NodeContext,
) -> Result<(CompiledTable, CompiledTable), CompileError> {
    let previous = std::sync::Arc::new(policy_from_toml("previous", PREVIOUS).expect("parses"));
    let (before, compiler) = TableCompiler::new(node.clone()).compile(&[previous])?;
    let policies: Vec<_> = policies.iter().cloned().map(std::sync::Arc::new).collect();
    let (table, _) = compiler.compile(&policies)?;
    Ok((before, table))
}

/// One of `items` (not empty), drawn by `rng`: seeded, so failures reproduce.
fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())]
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
        sources.push(IpAddr::V4(Ipv4Addr::from(rng.u32(..))));
        sources.push(IpAddr::V6(Ipv6Addr::from(rng.u128(..))));
    }
    sources
}

fn interesting_ports(table: &CompiledTable, rng: &mut Rng) -> Vec<u16> {
    let mut ports = vec![0, 1, 65535];
    for row in table.ingress.entries.iter().chain(&table.egress.entries) {
        let (lo, hi) = (row.port.port_lo, row.port.port_hi);
        ports.extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)]);
    }
    ports.extend((0..16).map(|_| rng.u16(..)));
    ports
}

/// What conntrack keys a connection's first packet by, as the programs do:
/// ports for TCP, UDP and SCTP, the identifier for ICMP echo, nothing else
/// for the rest.
pub(crate) fn ct_key(connection: &Connection, source_port: u16) -> (IpAddr, IpAddr, u8, u16, u16) {
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

/// ICMP types a generated ICMP or ICMPv6 packet may have (none of the
/// ICMPv6 types that bypass policy).
const ICMP_TYPES: [u16; 5] = [0, 3, 8, 11, 13];
const ICMPV6_TYPES: [u16; 4] = [128, 129, 139, 200];

/// Installs `policy_text` and checks `PACKETS_PER_FIXTURE` packets each way.
pub(crate) fn check_fixture<J: FrameJudge>(name: &str, policy_text: &str, audit_mode: bool) {
    check_policies::<J>(name, &[policy_text], audit_mode);
}

/// Installs the policies in `texts` together and checks
/// `PACKETS_PER_FIXTURE` packets each way.
pub(crate) fn check_policies<J: FrameJudge>(name: &str, texts: &[&str], audit_mode: bool) {
    let node = NodeContext {
        audit_mode,
        ..NodeContext::default()
    };
    check_on_node::<J>(name, texts, &node);
}

/// Installs the policies in `texts` compiled for `node` and checks
/// `PACKETS_PER_FIXTURE` packets each way.
pub(crate) fn check_on_node<J: FrameJudge>(name: &str, texts: &[&str], node: &NodeContext) {
    let policies: Vec<_> = texts
        .iter()
        .map(|text| policy_from_toml(name, text).expect("fixture parses"))
        .collect();
    check_policies_on_node::<J>(name, &policies, node);
}

/// Installs `policies` compiled for `node` and checks
/// `PACKETS_PER_FIXTURE` packets each way.
pub(crate) fn check_policies_on_node<J: FrameJudge>(
    name: &str,
    policies: &[Policy],
    node: &NodeContext,
) {
    let (previous, table) = compiled_after_previous(policies, node).expect("fixture compiles");
    for direction in [Direction::Ingress, Direction::Egress] {
        check_direction::<J>(name, &previous, &table, direction);
    }
}

/// Runs the generated packets of `direction` through a fresh `J` holding
/// `table`, each compared with the evaluator.
fn check_direction<J: FrameJudge>(
    name: &str,
    previous: &CompiledTable,
    table: &CompiledTable,
    direction: Direction,
) {
    let mut judge = J::with_table(
        &format!("{name}-{direction:?}"),
        previous,
        table,
        GENERATION,
    );
    // TC never sees what the prefilter dropped; it judges with the rows alone.
    let mut rows_only = table.clone();
    rows_only.prefilter.clear();
    let mut rng = Rng::with_seed(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64 ^ direction as u64);
    let peers = interesting_peers(table, &mut rng);
    let ports = interesting_ports(table, &mut rng);
    let protocols = [
        protocol::TCP,
        protocol::UDP,
        protocol::SCTP,
        protocol::ICMP,
        47,            // GRE: a protocol without ports, judged by L3 rules only
        protocol::ESP, // encrypted already: strict mode lets it pass
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
        let aimed = (!rows.is_empty() && rng.bool()).then(|| pick(&mut rng, rows));
        let peer = aimed.map_or_else(|| pick(&mut rng, &peers), |row| row.prefix.network());
        let mut proto = match aimed.map(|row| row.port.protocol) {
            Some(protocol::ALL) | None => pick(&mut rng, &protocols),
            Some(protocol::ANY) => pick(&mut rng, &protocols[..3]),
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
            (protocol::TCP | protocol::UDP | protocol::SCTP, _) => pick(&mut rng, &ports),
            (protocol::ICMP, _) => pick(&mut rng, &ICMP_TYPES),
            (protocol::ICMPV6, _) => pick(&mut rng, &ICMPV6_TYPES),
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
        if direction == Direction::Ingress {
            let expected = evaluate(table, direction, &connection);
            let judged = judge.prefilter(&data);
            let context =
                format!("{name} prefilter packet {i}: {connection:?}, evaluator says {expected:?}");
            if expected.drop_reason == drop_reason::PREFILTER {
                assert!(!judged.passed, "{context}");
                assert_eq!(
                    judged.reports.len(),
                    1,
                    "{context}: one flow per prefilter drop"
                );
                let report = judged.reports[0];
                assert_eq!(
                    (report.verdict, report.drop_reason, report.rule_id),
                    (expected.verdict, expected.drop_reason, expected.rule_id),
                    "{context}: the backend reported {report:?}"
                );
                seen[0] += 1;
            } else {
                assert!(
                    judged.passed && judged.reports.is_empty(),
                    "{context}: {judged:?}"
                );
            }
        }
        let expected = evaluate(&rows_only, direction, &connection);
        let judged = judge.filter(direction, &data);
        let context =
            format!("{name} {direction:?} packet {i}: {connection:?}, evaluator says {expected:?}");
        if opened.contains(&key) {
            assert!(
                judged.passed && judged.reports.is_empty(),
                "{context}: a tracked connection: {judged:?}"
            );
            continue;
        }
        if expected.verdict != verdict::DROPPED {
            opened.insert(key);
        }
        assert_eq!(
            judged.reports.len(),
            1,
            "{context}: one flow per new connection"
        );
        let report = judged.reports[0];
        assert_eq!(
            report,
            Report {
                verdict: expected.verdict,
                drop_reason: expected.drop_reason,
                rule_id: expected.rule_id,
                generation: GENERATION,
            },
            "{context}: the backend reported {report:?}"
        );
        assert_eq!(
            judged.passed,
            expected.verdict != verdict::DROPPED,
            "{context}"
        );
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
