//! End to end: `/metrics` scraped over HTTP, parsed as Prometheus text, moves
//! with the traffic sent and the applies made.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use palisade_e2e::{
    Daemon, Netns, TempDir, Topology, allow_from_policy, http_get, require_root, tcp_connect,
};
use prometheus_parse::{Scrape, Value};

const LISTEN: &str = "127.0.0.1:9964";

/// GET /metrics from inside the node's namespace, parsed.
fn scrape(netns: &Netns) -> Scrape {
    let body = http_get(netns, LISTEN, "/metrics").expect("metrics listener");
    let (head, body) = body.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text")
}

/// The value of `metric` whose labels include all of `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {metric}{labels:?} in {:#?}", scrape.samples));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric} is not a plain value: {other:?}"),
    }
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn counters_move_with_the_traffic_sent() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("metrics").expect("workdir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(repo.join("etc/palisade.toml")).expect("example config");
    let config = workdir.path().join("palisade.toml");
    let enabled = example.replace(
        "# e.g. listen = \"127.0.0.1:9964\"",
        &format!("listen = \"{LISTEN}\""),
    );
    assert_ne!(
        enabled, example,
        "the example documents the metrics listener"
    );
    std::fs::write(&config, enabled).expect("config");
    let daemon = Daemon::start(
        &topology.node,
        &config,
        &repo.join("etc/policies.d"),
        workdir.path(),
    )
    .expect("palisaded starts");

    let denied = [("reason", "POLICY_DENIED"), ("direction", "INGRESS")];
    let ingress = [("direction", "INGRESS"), ("match", "policy")];
    let ssh_rule = [
        ("policy", "host-ssh-from-bastion"),
        ("rule", "spec.ingress[0]"),
    ];
    let before = scrape(&topology.node);
    assert_eq!(value(&before, "palisade_policies", &[]), 1.0);
    assert_eq!(value(&before, "palisade_policy_generation", &[]), 1.0);
    assert_eq!(value(&before, "palisade_drop_packets_total", &denied), 0.0);
    assert!(scrape_has_help(&before, "palisade_drop_packets_total"));

    let ssh = SocketAddr::new(Topology::NODE.parse().expect("address"), 22);
    let outsider: IpAddr = Topology::OUTSIDER.parse().expect("address");
    let bastion: IpAddr = Topology::BASTION.parse().expect("address");
    let quick = Duration::from_millis(300);
    for _ in 0..3 {
        tcp_connect(&topology.client, outsider, ssh, quick).expect("connect");
    }
    tcp_connect(&topology.client, bastion, ssh, quick).expect("connect");

    // Nothing listens on port 22: the node answers the bastion's SYN with a
    // RST, which leaves by conntrack (a reply), a moment after the connect.
    let established = [("direction", "EGRESS"), ("match", "established")];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let after = loop {
        let after = scrape(&topology.node);
        if value(&after, "palisade_forward_packets_total", &established) > 0.0
            || std::time::Instant::now() > deadline
        {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let delta = |metric: &str, labels: &[(&str, &str)]| {
        value(&after, metric, labels) - value(&before, metric, labels)
    };
    assert_eq!(delta("palisade_drop_packets_total", &denied), 3.0);
    assert_eq!(delta("palisade_forward_packets_total", &ingress), 1.0);
    // The rule that let the bastion in counted its connection; the node's
    // answer went by conntrack.
    assert_eq!(delta("palisade_rule_packets_total", &ssh_rule), 1.0);
    assert!(delta("palisade_forward_packets_total", &established) >= 1.0);
    // Three SYNs of at least Ethernet + IPv4 + TCP headers.
    assert!(delta("palisade_drop_bytes_total", &denied) >= 3.0 * 54.0);
    assert_eq!(
        delta("palisade_drop_packets_total", &[("reason", "POLICY_DENY")]),
        0.0
    );
    assert_eq!(value(&after, "palisade_flow_events_lost_total", &[]), 0.0);
    let pressure = value(
        &after,
        "palisade_bpf_map_pressure_ratio",
        &[("map", "prefixes_ipv4")],
    );
    assert!(pressure > 0.0 && pressure < 0.01, "{pressure}");

    // Applies are counted by outcome.
    let bad = workdir.path().join("bad.toml");
    std::fs::write(&bad, "kind = \"Nope\"\n").expect("write");
    let output = daemon
        .ctl(&["apply", "-f", &bad.display().to_string()])
        .expect("apply");
    assert_eq!(output.status.code(), Some(3));
    let good = workdir.path().join("good.toml");
    std::fs::write(&good, allow_from_policy("extra", "192.0.2.0/24")).expect("write");
    let output = daemon
        .ctl(&["apply", "-f", &good.display().to_string()])
        .expect("apply");
    assert!(output.status.success(), "{output:?}");
    let applied = scrape(&topology.node);
    assert_eq!(
        value(
            &applied,
            "palisade_policy_apply_total",
            &[("outcome", "invalid")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &applied,
            "palisade_policy_apply_total",
            &[("outcome", "applied")]
        ),
        1.0
    );
    assert_eq!(value(&applied, "palisade_policies", &[]), 2.0);
    assert_eq!(value(&applied, "palisade_policy_generation", &[]), 2.0);
    let durations = applied
        .samples
        .iter()
        .find(|s| s.metric == "palisade_policy_apply_duration_seconds")
        .expect("apply duration histogram");
    match &durations.value {
        Value::Histogram(buckets) => {
            let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(total, 2.0, "{buckets:?}");
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

fn scrape_has_help(scrape: &Scrape, metric: &str) -> bool {
    scrape.docs.get(metric).is_some_and(|help| !help.is_empty())
}
