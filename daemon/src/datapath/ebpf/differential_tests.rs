//! The eBPF datapath against the reference evaluator, packet by packet,
//! through the differential harness (`datapath::differential`).
//!
//! Each policy fixture is compiled and installed into loaded (unattached)
//! programs ([`EbpfJudge`]); thousands of generated IPv4 and IPv6
//! connections are run through the XDP prefilter and the TC ingress program,
//! and others through the TC egress program, with `BPF_PROG_TEST_RUN`. The
//! action, and the verdict, drop reason and rule id each program reports in
//! its flow event, must equal what `palisade_policy::evaluate` says for the
//! same connection.

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
use crate::{
    config::Config,
    datapath::{
        Datapath as _,
        differential::{
            FrameJudge, Judgement, Report, check_fixture, check_on_node, check_policies,
            check_policies_on_node, compiled_after_previous,
        },
    },
};

const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC` (-1): pass on to the next program or the stack.
pub(crate) const TC_PASS: u32 = u32::MAX;
/// `TC_ACT_SHOT`.
pub(crate) const TC_DROP: u32 = 2;

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

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(decode_event(&item).expect("a whole flow event"));
    }
    events
}

/// The eBPF backend as the differential harness drives it: the programs
/// loaded (unattached) with the table installed, each frame run through
/// the XDP prefilter or the TC program with `BPF_PROG_TEST_RUN`, the flow
/// events read back from the ring.
pub(crate) struct EbpfJudge {
    datapath: EbpfDatapath,
    ring: RingBuf<MapData>,
    /// Dropped last: the datapath's pins live here.
    _pins: TestPins,
}

impl EbpfJudge {
    fn judged(&mut self, action: u32, pass: u32) -> Judgement {
        Judgement {
            passed: action == pass,
            reports: drain(&mut self.ring)
                .into_iter()
                .map(|event| Report {
                    verdict: event.verdict,
                    drop_reason: event.drop_reason,
                    rule_id: event.rule_id,
                    generation: event.generation,
                })
                .collect(),
        }
    }
}

impl FrameJudge for EbpfJudge {
    fn with_table(
        name: &str,
        previous: &CompiledTable,
        table: &CompiledTable,
        generation: u32,
    ) -> Self {
        let pins = TestPins::new(name);
        let (mut datapath, ring) = EbpfDatapath::load(&test_config(&pins)).expect("eBPF loads");
        for earlier in [generation - 2, generation - 1] {
            datapath.install(previous, earlier).expect("table installs");
        }
        datapath.install(table, generation).expect("table installs");
        Self {
            datapath,
            ring,
            _pins: pins,
        }
    }

    fn prefilter(&mut self, frame: &[u8]) -> Judgement {
        let options = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        let xdp = self.datapath.xdp_program().expect("XDP program");
        let action = xdp.test_run(options).expect("XDP test run").return_value;
        self.judged(action, XDP_PASS)
    }

    fn filter(&mut self, direction: Direction, frame: &[u8]) -> Judgement {
        self.filter_marked(direction, frame, 0)
    }
}

impl EbpfJudge {
    /// [`FrameJudge::filter`] with the packet carrying `mark` (`skb->mark`,
    /// as an XFRM state's output mark sets it).
    fn filter_marked(&mut self, direction: Direction, frame: &[u8], mark: u32) -> Judgement {
        // `struct __sk_buff` up to `mark`: `len` and `pkt_type` must be zero.
        let mut context = [0u8; 12];
        context[8..].copy_from_slice(&mark.to_ne_bytes());
        let options = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&context),
            ..TestRunOptions::default()
        };
        let tc = self.datapath.tc_program(direction).expect("TC program");
        let action = tc.test_run(options).expect("TC test run").return_value;
        self.judged(action, TC_PASS)
    }
}
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn example_policy_matches_the_evaluator() {
    require_root();
    let text = include_str!("../../../../etc/policies.d/host-ssh-from-bastion.toml");
    check_fixture::<EbpfJudge>("example", text, false);
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
    check_fixture::<EbpfJudge>("layered", LAYERED, false);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn audit_mode_matches_the_evaluator() {
    require_root();
    check_fixture::<EbpfJudge>("layered-audit", LAYERED, true);
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
    check_policies::<EbpfJudge>("audited", &[&audited, ENFORCED_BESIDE_AUDITED], false);
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
    check_on_node::<EbpfJudge>("strict", &[LAYERED], &node);
}

/// In IPsec tunnel mode the kernel hands a decrypted packet back through
/// the interface: with the mark palisade's inbound states set it passes
/// strict mode; the same packet unmarked (or with another value in the
/// mark's bits) is dropped as unencrypted.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_packet_ipsec_decrypted_passes_strict_mode_and_one_in_the_clear_does_not() {
    require_root();
    let node = NodeContext {
        strict_prefixes: vec!["10.1.0.0/16".parse().expect("a prefix")],
        ..NodeContext::default()
    };
    let (previous, table) = compiled_after_previous(&[], &node).expect("compiles");
    let mut judge = EbpfJudge::with_table("decrypted", &previous, &table, 7);
    let echo = frame(
        &Connection {
            protocol: protocol::ICMP,
            source: "10.1.0.5".parse().expect("an address"),
            destination: "10.255.0.1".parse().expect("an address"),
            destination_port: 8,
        },
        7,
    );
    let clear = judge.filter(Direction::Ingress, &echo);
    assert!(!clear.passed, "{:?}", clear.reports);
    assert_eq!(
        clear.reports[0].drop_reason,
        drop_reason::UNENCRYPTED_TRAFFIC
    );
    let other = judge.filter_marked(Direction::Ingress, &echo, 0x0e00);
    assert!(!other.passed, "another mark is no proof of decryption");
    let decrypted = judge.filter_marked(
        Direction::Ingress,
        &echo,
        palisade_common::IPSEC_DECRYPTED_MARK | 0x1_0000,
    );
    assert!(decrypted.passed, "{:?}", decrypted.reports);
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
    check_fixture::<EbpfJudge>("wildcards", text, false);
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
    check_fixture::<EbpfJudge>("icmp", text, false);
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
    check_fixture::<EbpfJudge>("v6-only", text, false);
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
        let (previous, table) = compiled_after_previous(&case.policies, &NodeContext::default())
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        let mut judge =
            EbpfJudge::with_table(&format!("cilium-{}", case.name), &previous, &table, 7);
        for (i, packet) in case.packets.iter().enumerate() {
            let data = frame(&packet.connection, 40_000 + u16::try_from(i).unwrap_or(0));
            let prefiltered =
                (packet.direction == Direction::Ingress).then(|| judge.prefilter(&data));
            let judged = match prefiltered {
                Some(judged) if !judged.passed => judged,
                _ => judge.filter(packet.direction, &data),
            };
            let reported = judged.reports.first().map(|report| report.verdict);
            let dropped = !judged.passed;
            if dropped != (packet.verdict == verdict::DROPPED) || reported != Some(packet.verdict) {
                failures.push(format!(
                    "{}: {:?} {:?}: Cilium says {}, the programs {} (flows {:?})\n  source: {}",
                    case.name,
                    packet.direction,
                    packet.connection,
                    verdict::name(packet.verdict),
                    if dropped { "dropped it" } else { "passed it" },
                    judged.reports,
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
        check_policies_on_node::<EbpfJudge>(&fixture.name, &policies, &node);
        checked += 1;
    }
    assert_eq!(checked, 14, "every host example checked");
}
