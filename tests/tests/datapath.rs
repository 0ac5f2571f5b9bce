//! The eBPF datapath with real traffic between network namespaces:
//! conntrack, UDP and ICMP type rules, fragments, audit mode, the XDP
//! prefilter, the failsafe list, atomic swaps under traffic, and a kill -9
//! restart that keeps enforcement and connections.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use palisade_api::{Flow, Status, Verdict};
use palisade_e2e::{
    Connect, Daemon, EchoServer, Launch, Listener, TempDir, Topology, UdpSink, address, binary,
    echoes,
    frames::{
        frame, orphan_fragment, set_macs, short_ipv4_header, truncated_tcp,
        with_ipv6_extension_headers,
    },
    icmp_answered, mac_address, require_root, send_frame, send_udp_sized, tcp_connect, tcp_stream,
};

const QUICK: Duration = Duration::from_millis(500);

fn v4(address: &str) -> Ipv4Addr {
    address.parse().expect("test address")
}

/// A workdir with `config` (TOML text) and a policy directory holding `policies`.
fn setup(name: &str, config: &str, policies: &[(&str, &str)]) -> (TempDir, PathBuf, PathBuf) {
    let workdir = TempDir::new(name).expect("workdir");
    let config_path = workdir.path().join("config.toml");
    std::fs::write(&config_path, config).expect("config");
    let policy_dir = workdir.path().join("policies.d");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    for (file, text) in policies {
        std::fs::write(policy_dir.join(file), text).expect("policy");
    }
    (workdir, config_path, policy_dir)
}

fn start(topology: &Topology, workdir: &TempDir, config: &Path, policies: &Path) -> Daemon {
    Daemon::start(&topology.node, config, policies, workdir.path()).expect("palisaded starts")
}

/// The first flow `wanted` accepts, waiting up to 5 s for it.
fn wait_for_flow(daemon: &Daemon, wanted: impl Fn(&Flow) -> bool) -> Flow {
    let flows = daemon
        .flows_until(|flows| flows.iter().any(&wanted))
        .expect("observe");
    flows
        .iter()
        .find(|flow| wanted(flow))
        .cloned()
        .unwrap_or_else(|| panic!("no such flow in {flows:#?}"))
}

fn status(daemon: &Daemon) -> Status {
    daemon.status().expect("status")
}

const INTERFACES: &str = "[datapath]\ninterfaces = [\"eth0\"]\n";

const BASTION_UDP_AND_PING: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "udp-and-ping" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.200.0.8/29"]
toPorts = [{ ports = [{ port = 5353, protocol = "UDP" }] }]
[[spec.ingress]]
fromCIDR = ["10.200.0.8/29"]
icmps = [{ fields = [{ type = "EchoRequest" }] }]
"#;

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn replies_of_connections_the_node_opens_pass_under_default_deny() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup(
        "ct-replies",
        INTERFACES,
        &[(
            "ssh.toml",
            include_str!("../../etc/policies.d/host-ssh-from-bastion.toml"),
        )],
    );
    let daemon = start(&topology, &workdir, &config, &policies);
    // The client runs a service; the node connects to it. Nothing in the
    // policy allows the client's answers: conntrack does.
    let _service = EchoServer::start(
        &topology.client,
        SocketAddr::new(address(Topology::BASTION), 7000),
    )
    .expect("echo server");
    let mut stream = tcp_stream(
        &topology.node,
        address(Topology::NODE),
        SocketAddr::new(address(Topology::BASTION), 7000),
        QUICK,
    )
    .expect("the node's connection opens");
    assert!(
        echoes(&mut stream, b"over conntrack"),
        "the reply traffic passes"
    );
    // ...while a new connection the other way, to the same port, is denied.
    let _listener = Listener::start(&topology.node, Topology::node_port(7000)).expect("listener");
    assert_eq!(
        tcp_connect(
            &topology.client,
            address(Topology::BASTION),
            Topology::node_port(7000),
            QUICK
        )
        .expect("connect"),
        Connect::TimedOut
    );
    let counters = status(&daemon).counters;
    assert!(counters.ingress.established.packets >= 2, "{counters:?}");
    assert!(counters.egress.forwarded.packets >= 1, "{counters:?}");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn udp_and_icmp_type_rules_and_fragments() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup(
        "udp-icmp",
        INTERFACES,
        &[("udp.toml", BASTION_UDP_AND_PING)],
    );
    let daemon = start(&topology, &workdir, &config, &policies);
    let sink = UdpSink::start(&topology.node, Topology::node_port(5353)).expect("UDP sink");
    let bastion = address(Topology::BASTION);
    let outsider = address(Topology::OUTSIDER);

    // UDP: the rule's port from the bastion only; 3000 bytes go as two
    // fragments, the second without ports: it follows its first.
    for (source, length) in [
        (outsider, 100),
        (outsider, 3000),
        (bastion, 100),
        (bastion, 3000),
    ] {
        send_udp_sized(&topology.client, source, Topology::node_port(5353), length).expect("send");
    }
    sink.wait_for(2, Duration::from_secs(3));
    // Give a wrongly passed datagram time to show up too.
    std::thread::sleep(Duration::from_millis(200));
    let mut received = sink.received();
    received.sort_unstable();
    assert_eq!(received, [(bastion, 100), (bastion, 3000)]);
    let counters = status(&daemon).counters;
    assert_eq!(counters.ingress.dropped_fragment.packets, 0, "{counters:?}");
    // The outsider's two datagrams: three packets, each judged and dropped.
    assert!(
        counters.ingress.dropped_policy_denied.packets >= 3,
        "{counters:?}"
    );

    // ICMP: echo from the bastion is allowed, its timestamp request is not,
    // and nothing from the outsider.
    let answered = |source: &str, icmp_type| {
        icmp_answered(
            &topology.client,
            v4(source),
            v4(Topology::NODE),
            icmp_type,
            QUICK,
        )
        .expect("ICMP exchange")
    };
    assert!(answered(Topology::BASTION, 8), "echo from the bastion");
    assert!(
        !answered(Topology::BASTION, 13),
        "timestamp from the bastion"
    );
    assert!(!answered(Topology::OUTSIDER, 8), "echo from the outsider");
    let timestamp = wait_for_flow(&daemon, |flow| {
        flow.verdict == Verdict::Dropped
            && flow.ip.source == address(Topology::BASTION)
            && matches!(flow.l4, Some(palisade_api::Layer4::IcmpV4(icmp)) if icmp.kind == 13)
    });
    assert_eq!(timestamp.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn audit_mode_forwards_and_reports_audit() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup(
        "audit",
        &format!("{INTERFACES}[policy]\naudit_mode = true\n"),
        &[(
            "ssh.toml",
            include_str!("../../etc/policies.d/host-ssh-from-bastion.toml"),
        )],
    );
    let daemon = start(&topology, &workdir, &config, &policies);
    let listener = Listener::start(&topology.node, Topology::node_port(22)).expect("listener");
    assert_eq!(
        tcp_connect(
            &topology.client,
            address(Topology::OUTSIDER),
            Topology::node_port(22),
            QUICK
        )
        .expect("connect"),
        Connect::Established,
        "audit mode lets the would-be drop through"
    );
    let flow = wait_for_flow(&daemon, |flow| {
        flow.ip.source == address(Topology::OUTSIDER) && flow.verdict == Verdict::Audit
    });
    assert_eq!(flow.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !listener.peers().contains(&address(Topology::OUTSIDER)) {
        assert!(
            Instant::now() < deadline,
            "the listener never saw the outsider"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let counters = status(&daemon).counters;
    assert_eq!(counters.dropped(), 0, "{counters:?}");
    assert!(
        counters.ingress.audited_policy_denied.packets >= 1,
        "{counters:?}"
    );
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn prefilter_drops_configured_and_denied_prefixes() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let deny_bastion = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "deny-bastion" }
[spec]
nodeSelector = {}
[[spec.ingress]]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
[[spec.ingressDeny]]
fromCIDR = ["10.200.0.10/32"]
"#;
    let (workdir, config, policies) = setup(
        "prefilter",
        &format!("{INTERFACES}prefilter = [\"10.200.0.100/32\"]\n"),
        &[("deny.toml", deny_bastion)],
    );
    let daemon = start(&topology, &workdir, &config, &policies);
    let _listener = Listener::start(&topology.node, Topology::node_port(22)).expect("listener");
    for source in [Topology::OUTSIDER, Topology::BASTION] {
        assert_eq!(
            tcp_connect(
                &topology.client,
                address(source),
                Topology::node_port(22),
                QUICK
            )
            .expect("connect"),
            Connect::TimedOut,
            "{source} is prefiltered"
        );
        let flow = wait_for_flow(&daemon, |flow| flow.ip.source == address(source));
        assert_eq!(
            (flow.verdict.as_str(), flow.drop_reason_desc.as_deref()),
            ("DROPPED", Some("PREFILTER")),
            "{flow:?}"
        );
    }
    // The policy's deny rule is named; the config's list has no rule.
    let bastion = wait_for_flow(&daemon, |flow| flow.ip.source == address(Topology::BASTION));
    assert_eq!(bastion.ingress_denied_by[0].rule, "spec.ingressDeny[0]");
    let counters = status(&daemon).counters;
    assert!(
        counters.ingress.dropped_prefilter.packets >= 2,
        "{counters:?}"
    );
    assert_eq!(
        counters.ingress.dropped_policy_deny.packets, 0,
        "TC never saw them"
    );
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn failsafe_ssh_stays_reachable_under_a_deny_all_policy() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let deny_all = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "deny-all" }
[spec]
nodeSelector = {}
[[spec.ingressDeny]]
toPorts = [{ ports = [{ port = 0 }] }]
"#;
    let (workdir, config, policies) = setup("failsafe", INTERFACES, &[("deny.toml", deny_all)]);
    let daemon = Daemon::start_with(
        &topology.node,
        &config,
        &policies,
        workdir.path(),
        &Launch {
            failsafe: true,
            ..Launch::default()
        },
    )
    .expect("palisaded starts");
    let _ssh = Listener::start(&topology.node, Topology::node_port(22)).expect("listener");
    let _web = Listener::start(&topology.node, Topology::node_port(8080)).expect("listener");
    let connect = |port| {
        tcp_connect(
            &topology.client,
            address(Topology::OUTSIDER),
            Topology::node_port(port),
            QUICK,
        )
        .expect("connect")
    };
    assert_eq!(connect(22), Connect::Established, "failsafe SSH");
    assert_eq!(
        connect(8080),
        Connect::TimedOut,
        "everything else is denied"
    );
    let flow = wait_for_flow(&daemon, |flow| flow.verdict == Verdict::Forwarded);
    assert_eq!(flow.ingress_allowed_by[0].name, "failsafe");
}

const SWAPS: usize = 1000;

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn traffic_flows_while_the_table_is_swapped_a_thousand_times() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    // Two tables that both allow the bastion's UDP 5353, by different rules.
    let table_a = BASTION_UDP_AND_PING.replace("udp-and-ping", "swap");
    let table_b = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "swap" }
[spec]
nodeSelector = {}
[[spec.ingressDeny]]
fromCIDR = ["10.200.0.96/27"]
toPorts = [{ ports = [{ port = 9, protocol = "UDP" }] }]
[[spec.ingress]]
fromCIDR = ["10.200.0.0/24"]
toPorts = [{ ports = [{ port = 5000, endPort = 6000, protocol = "UDP" }] }]
"#;
    let (workdir, config, policies) = setup("swap", INTERFACES, &[("swap.toml", &table_a)]);
    let daemon = start(&topology, &workdir, &config, &policies);
    let sink = UdpSink::start(&topology.node, Topology::node_port(5353)).expect("UDP sink");
    let files = [workdir.path().join("a.toml"), workdir.path().join("b.toml")];
    std::fs::write(&files[0], &table_a).expect("write");
    std::fs::write(&files[1], table_b).expect("write");

    // Each datagram from a fresh socket (a new source port): each is a new
    // connection, judged by whichever table is live.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        topology
            .client
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let socket =
                        std::net::UdpSocket::bind(SocketAddr::new(address(Topology::BASTION), 0))
                            .expect("bind");
                    socket
                        .send_to(b"swap", Topology::node_port(5353))
                        .expect("send");
                    sent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
            .expect("sender")
    };
    let ctl = binary("palisadectl").expect("palisadectl");
    for i in 0..SWAPS {
        let output = Command::new(&ctl)
            .arg("--socket")
            .arg(daemon.socket())
            .args(["apply", "-f"])
            .arg(&files[i % 2])
            .output()
            .expect("apply");
        assert!(output.status.success(), "apply {i}: {output:?}");
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender thread");
    let sent = sent.load(Ordering::Relaxed);
    let received = sink.wait_for(sent, Duration::from_secs(5)).len();
    let status = status(&daemon);
    assert_eq!(status.generation, u32::try_from(SWAPS).unwrap_or(0) + 1);
    assert!(
        sent > SWAPS,
        "traffic flowed during the swaps ({sent} datagrams)"
    );
    assert_eq!(status.counters.dropped(), 0, "{:?}", status.counters);
    assert_eq!(
        received, sent,
        "every datagram got a verdict from a whole table"
    );
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn kill_nine_keeps_enforcement_and_connections_and_cleanup_removes_it() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup(
        "restart",
        INTERFACES,
        &[(
            "ssh.toml",
            include_str!("../../etc/policies.d/host-ssh-from-bastion.toml"),
        )],
    );
    let mut daemon = start(&topology, &workdir, &config, &policies);
    let _ssh = Listener::start(&topology.node, Topology::node_port(22)).expect("listener");
    // A connection only conntrack lets through: opened by the node, under
    // default-deny ingress.
    let _service = EchoServer::start(
        &topology.client,
        SocketAddr::new(address(Topology::BASTION), 7000),
    )
    .expect("echo server");
    let mut stream = tcp_stream(
        &topology.node,
        address(Topology::NODE),
        SocketAddr::new(address(Topology::BASTION), 7000),
        QUICK,
    )
    .expect("the node's connection opens");
    assert!(echoes(&mut stream, b"before"));
    let outsider = || {
        tcp_connect(
            &topology.client,
            address(Topology::OUTSIDER),
            Topology::node_port(22),
            QUICK,
        )
        .expect("connect")
    };
    assert_eq!(outsider(), Connect::TimedOut);

    daemon.kill_and_restart().expect("palisaded restarts");
    // (kill_and_restart waits for the new daemon; check the gap separately.)
    assert!(
        echoes(&mut stream, b"after restart"),
        "the connection survived"
    );
    assert_eq!(outsider(), Connect::TimedOut, "still enforced");
    assert_eq!(
        tcp_connect(
            &topology.client,
            address(Topology::BASTION),
            Topology::node_port(22),
            QUICK
        )
        .expect("connect"),
        Connect::Established
    );
    assert!(daemon.log().contains("adopted_links=3"), "{}", daemon.log());

    // Without a daemon at all, enforcement stays...
    daemon.stop();
    assert_eq!(
        outsider(),
        Connect::TimedOut,
        "enforced with no daemon running"
    );
    assert!(echoes(&mut stream, b"no daemon"));
    // ...until `palisaded --cleanup` removes it.
    let cleanup = daemon.cleanup().expect("cleanup");
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(!daemon.pin_path().exists());
    // The kernel detaches a link once its last pin is gone, a moment later.
    let deadline = Instant::now() + Duration::from_secs(3);
    while outsider() != Connect::Established {
        assert!(Instant::now() < deadline, "still enforced after cleanup");
    }
}

const SSH_V4_AND_V6: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "ssh-v4-v6" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.200.0.8/29", "2001:db8:200::/48"]
toPorts = [{ ports = [{ port = 22, protocol = "TCP" }] }]
"#;

/// Frames a broken or hostile sender puts on the wire, through the veth:
/// IPv6 extension headers are walked to the TCP port (allowed and denied
/// by it), a later fragment without its first is dropped as
/// `FRAG_NOT_FOUND`, malformed IPv4 headers as `INVALID_PACKET_DROPPED`.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn extension_headers_orphan_fragments_and_malformed_headers_on_the_wire() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) =
        setup("hostile-frames", INTERFACES, &[("ssh.toml", SSH_V4_AND_V6)]);
    let daemon = start(&topology, &workdir, &config, &policies);
    let node_mac = mac_address(&topology.node, "eth0").expect("node MAC");
    let client_mac = mac_address(&topology.client, "eth0").expect("client MAC");
    let send = |mut data: Vec<u8>| {
        set_macs(&mut data, node_mac, client_mac);
        send_frame(&topology.client, "eth0", data).expect("frame sent");
    };
    let ssh = |source: &str, destination: &str| palisade_policy::Connection {
        protocol: palisade_common::protocol::TCP,
        source: address(source),
        destination: address(destination),
        destination_port: 22,
    };
    send(with_ipv6_extension_headers(&frame(
        &ssh("2001:db8:200::10", "fd00:200::1"),
        41_001,
    )));
    send(with_ipv6_extension_headers(&frame(
        &ssh("2001:db8:999::10", "fd00:200::1"),
        41_002,
    )));
    send(orphan_fragment(
        &frame(&ssh(Topology::BASTION, Topology::NODE), 41_003),
        0x5151,
    ));
    send(short_ipv4_header(&frame(
        &ssh(Topology::BASTION, Topology::NODE),
        41_004,
    )));
    send(truncated_tcp(&frame(
        &ssh(Topology::BASTION, Topology::NODE),
        41_005,
    )));
    let port_22 = |flow: &Flow| {
        matches!(
            flow.l4,
            Some(palisade_api::Layer4::Tcp {
                destination_port: 22,
                ..
            })
        )
    };
    let allowed = wait_for_flow(&daemon, |flow| {
        flow.ip.source == address("2001:db8:200::10") && flow.verdict == Verdict::Forwarded
    });
    assert!(port_22(&allowed), "{allowed:#?}");
    let denied = wait_for_flow(&daemon, |flow| {
        flow.ip.source == address("2001:db8:999::10") && flow.verdict == Verdict::Dropped
    });
    assert!(port_22(&denied), "{denied:#?}");
    assert_eq!(denied.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
    let orphan = wait_for_flow(&daemon, |flow| {
        flow.drop_reason_desc.as_deref() == Some("FRAG_NOT_FOUND")
    });
    assert_eq!(orphan.ip.source, address(Topology::BASTION));
    wait_for_flow(&daemon, |flow| {
        flow.drop_reason_desc.as_deref() == Some("INVALID_PACKET_DROPPED")
    });
    let counters = status(&daemon).counters;
    assert_eq!(counters.ingress.dropped_fragment.packets, 1, "{counters:?}");
    assert_eq!(counters.ingress.dropped_invalid.packets, 2, "{counters:?}");
}
