//! End to end: `palisadectl observe` filters return exactly the flows of the
//! traffic sent, the way `hubble observe` filters do.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use palisade_api::{Flow, Layer4};
use palisade_e2e::{
    ChildGuard, Daemon, TempDir, Topology, address, binary, require_root, send_icmp_echo, send_udp,
    tcp_connect,
};

const ALLOW_BASTION_DNS: &str = r#"
apiVersion = "cilium.io/v2"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "allow-bastion-dns" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.200.0.10/32"]
toPorts = [{ ports = [{ port = "53", protocol = "UDP" }] }]
"#;

const DENY_OUTSIDER_WEB: &str = r#"
apiVersion = "cilium.io/v2"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "deny-outsider-web" }
[spec]
nodeSelector = {}
[[spec.ingressDeny]]
fromCIDR = ["10.200.0.100/32"]
toPorts = [{ ports = [{ port = "8080", protocol = "TCP" }] }]
"#;

/// What each packet this test sends is called, for readable assertions.
fn label(flow: &Flow) -> Option<&'static str> {
    let (protocol, port) = match &flow.l4 {
        Some(Layer4::Tcp {
            destination_port, ..
        }) => ("tcp", *destination_port),
        Some(Layer4::Udp(pair)) => ("udp", pair.destination_port),
        Some(Layer4::IcmpV4(_)) => ("icmp", 0),
        _ => return None,
    };
    Some(
        match (flow.ip.source.to_string().as_str(), protocol, port) {
            (Topology::BASTION, "tcp", 22) => "A bastion ssh",
            (Topology::OUTSIDER, "tcp", 22) => "B outsider ssh",
            (Topology::OUTSIDER, "udp", 53) => "C outsider dns",
            (Topology::BASTION, "udp", 53) => "D bastion dns",
            (Topology::OUTSIDER, "tcp", 8080) => "E outsider web",
            (Topology::BASTION, "icmp", 0) => "F bastion ping",
            _ => "unexpected",
        },
    )
}

fn observe(daemon: &Daemon, filters: &[&str]) -> Vec<Flow> {
    daemon.flows(filters).expect("observe")
}

fn labels(flows: &[Flow]) -> Vec<&'static str> {
    flows
        .iter()
        .map(|f| label(f).unwrap_or("not ours"))
        .collect()
}

fn set(labels: &[&'static str]) -> BTreeSet<&'static str> {
    labels.iter().copied().collect()
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn each_filter_returns_exactly_the_expected_flows() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("observe").expect("workdir");
    let policies = workdir.path().join("policies.d");
    std::fs::create_dir(&policies).expect("policy dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(
        repo.join("etc/policies.d/host-ssh-from-bastion.toml"),
        policies.join("host-ssh-from-bastion.toml"),
    )
    .expect("copy example");
    std::fs::write(policies.join("allow-bastion-dns.toml"), ALLOW_BASTION_DNS).expect("write");
    std::fs::write(policies.join("deny-outsider-web.toml"), DENY_OUTSIDER_WEB).expect("write");
    let daemon = Daemon::start(
        &topology.node,
        &repo.join("etc/palisade.toml"),
        &policies,
        workdir.path(),
    )
    .expect("palisaded starts");

    let before = humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(1)).to_string();
    let node: Ipv4Addr = Topology::NODE.parse().expect("address");
    let bastion: IpAddr = Topology::BASTION.parse().expect("address");
    let outsider: IpAddr = Topology::OUTSIDER.parse().expect("address");
    let to = |port| SocketAddr::new(IpAddr::V4(node), port);
    let quick = Duration::from_millis(300);
    // Sent in this order: A B C D E F (see `label`).
    tcp_connect(&topology.client, bastion, to(22), quick).expect("A");
    tcp_connect(&topology.client, outsider, to(22), quick).expect("B");
    send_udp(&topology.client, outsider, to(53)).expect("C");
    send_udp(&topology.client, bastion, to(53)).expect("D");
    tcp_connect(&topology.client, outsider, to(8080), quick).expect("E");
    send_icmp_echo(
        &topology.client,
        Topology::BASTION.parse().expect("v4"),
        node,
    )
    .expect("F");

    let deadline = Instant::now() + Duration::from_secs(5);
    let all = loop {
        let all = observe(&daemon, &[]);
        if all.len() >= 6 || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        labels(&all),
        [
            "A bastion ssh",
            "B outsider ssh",
            "C outsider dns",
            "D bastion dns",
            "E outsider web",
            "F bastion ping"
        ],
        "every packet sent, in order, and nothing else: {all:#?}"
    );
    let verdicts: Vec<&str> = all.iter().map(|f| f.verdict.as_str()).collect();
    assert_eq!(
        verdicts,
        [
            "FORWARDED",
            "DROPPED",
            "DROPPED",
            "FORWARDED",
            "DROPPED",
            "DROPPED"
        ]
    );
    assert_eq!(all[4].drop_reason_desc.as_deref(), Some("POLICY_DENY"));
    assert_eq!(all[1].drop_reason_desc.as_deref(), Some("POLICY_DENIED"));

    let after_traffic =
        humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(1)).to_string();
    let cases: Vec<(Vec<&str>, Vec<&'static str>)> = vec![
        (
            vec!["--verdict", "FORWARDED"],
            vec!["A bastion ssh", "D bastion dns"],
        ),
        (
            vec!["--verdict", "DROPPED"],
            vec![
                "B outsider ssh",
                "C outsider dns",
                "E outsider web",
                "F bastion ping",
            ],
        ),
        (vec!["--verdict", "AUDIT"], vec![]),
        (
            vec!["--from-ip", Topology::BASTION],
            vec!["A bastion ssh", "D bastion dns", "F bastion ping"],
        ),
        (
            vec!["--from-ip", "10.200.0.96/27"],
            vec!["B outsider ssh", "C outsider dns", "E outsider web"],
        ),
        (
            vec!["--ip", Topology::OUTSIDER],
            vec!["B outsider ssh", "C outsider dns", "E outsider web"],
        ),
        (vec!["--to-ip", "10.200.0.2"], vec![]),
        (
            vec![
                "--to-ip",
                "10.200.0.0/24",
                "--from-ip",
                Topology::OUTSIDER,
                "--from-ip",
                "10.200.0.8/29",
            ],
            labels(&all),
        ),
        (
            vec!["--to-port", "22"],
            vec!["A bastion ssh", "B outsider ssh"],
        ),
        (
            vec!["--port", "53"],
            vec!["C outsider dns", "D bastion dns"],
        ),
        (vec!["--from-port", "53"], vec![]),
        (
            vec!["--protocol", "udp"],
            vec!["C outsider dns", "D bastion dns"],
        ),
        (vec!["--protocol", "icmp"], vec!["F bastion ping"]),
        (
            vec!["--protocol", "tcp", "--protocol", "udp"],
            vec![
                "A bastion ssh",
                "B outsider ssh",
                "C outsider dns",
                "D bastion dns",
                "E outsider web",
            ],
        ),
        (
            vec!["--type", "drop"],
            vec![
                "B outsider ssh",
                "C outsider dns",
                "E outsider web",
                "F bastion ping",
            ],
        ),
        (vec!["-t", "trace"], vec!["A bastion ssh", "D bastion dns"]),
        (vec!["--type", "policy-verdict"], labels(&all)),
        (
            vec!["--policy", "deny-outsider-web"],
            vec!["E outsider web"],
        ),
        (
            vec![
                "--policy",
                "host-ssh-from-bastion",
                "--policy",
                "allow-bastion-dns",
            ],
            vec!["A bastion ssh", "D bastion dns"],
        ),
        (vec!["--since", &before], labels(&all)),
        (vec!["--since", "1h"], labels(&all)),
        (vec!["--since", &after_traffic], vec![]),
        (vec!["--until", &before], vec![]),
        (
            vec!["--last", "2"],
            vec!["E outsider web", "F bastion ping"],
        ),
        (
            vec!["--verdict", "DROPPED", "--protocol", "tcp"],
            vec!["B outsider ssh", "E outsider web"],
        ),
        (
            vec!["--verdict", "DROPPED", "--last", "1", "--to-port", "22"],
            vec!["B outsider ssh"],
        ),
    ];
    for (filters, expected) in cases {
        let got = labels(&observe(&daemon, &filters));
        if filters.contains(&"--last") {
            assert_eq!(got, expected, "observe {filters:?}");
        } else {
            assert_eq!(set(&got), set(&expected), "observe {filters:?}");
            assert_eq!(got.len(), expected.len(), "observe {filters:?}: duplicates");
        }
    }

    // A bad filter value is refused with the reason, exit status 3.
    let output = daemon
        .ctl(&["observe", "--to-ip", "10.0.0.0/33"])
        .expect("palisadectl runs");
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid to_ip filter"));

    // --follow streams new matching flows as they happen.
    let follower = Command::new(binary("palisadectl").expect("built"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["observe", "--follow", "-o", "json", "--to-port", "9999"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("observe --follow starts");
    let mut follower = ChildGuard::new(follower);
    let stdout = follower.take_stdout().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Nothing old matches; the follower is subscribed once it has printed nothing for a moment.
    assert!(lines_rx.recv_timeout(Duration::from_millis(500)).is_err());
    tcp_connect(&topology.client, outsider, to(9999), quick).expect("G");
    send_udp(&topology.client, outsider, to(9998)).expect("H, not matching");
    let line = lines_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a followed flow");
    let flow: Flow = serde_json::from_str(&line).expect("json");
    assert_eq!(flow.ip.source, address(Topology::OUTSIDER));
    assert!(matches!(
        flow.l4,
        Some(Layer4::Tcp {
            destination_port: 9999,
            ..
        })
    ));
    assert!(
        lines_rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "only the matching flow"
    );
    follower.stop();
}
