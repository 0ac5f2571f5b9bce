//! The IPsec node mesh: two palisaded nodes in two namespaces joined by a
//! veth pair (192.0.2.1 and .2), pods on loopback (10.99.1.1, 10.99.2.1),
//! each pod prefix routed to its node. This host's kernel has no ESP: the
//! tests whose names end in `in_a_kernel_with_esp` run in the kernel
//! matrix's Debian guest (`cargo xtask kernel-matrix palisade-e2e`), and
//! `cargo xtask test` leaves them to it.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use palisade_e2e::{
    ChildGuard, Daemon, TempDir, address,
    ipsec_mesh::{
        FOREIGN_SPI, IpsecPair, KEY_3, KEY_4, add_foreign_ike_objects, routed_nodes, start_ipsec,
        write_keys,
    },
    mesh::{METRICS, Node},
    require_root, require_tools,
};

/// The hex of key 3, which must never be logged or shown.
const KEY_3_HEX: &str = "0102030405060708090a0b0c0d0e0f1011121314";

/// `palisadectl encryption status -o json` of `daemon`.
fn encryption_status(daemon: &Daemon) -> serde_json::Value {
    let output = daemon
        .ctl(&["encryption", "status", "-o", "json"])
        .expect("palisadectl");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// One ping from `from` to `to`: pod to pod in tunnel mode, node to node
/// in transport mode.
fn pings(from: &Node, to: &Node, mode: &str) -> bool {
    let (source, destination) = ends(from, to, mode);
    from.netns
        .command("ping")
        .args(["-c", "1", "-W", "1", "-I", source, destination])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn ends<'a>(from: &'a Node, to: &'a Node, mode: &str) -> (&'a str, &'a str) {
    if mode == "tunnel" {
        (from.pod_address, to.pod_address)
    } else {
        (from.underlay, to.underlay)
    }
}

fn wait_for_ping(pair: &IpsecPair, mode: &str) {
    for _ in 0..30 {
        if pings(&pair.a, &pair.b, mode) {
            return;
        }
        thread::sleep(Duration::from_millis(300));
    }
    panic!("no ping from A to B over IPsec:\n{}", pair.logs());
}

/// What leaves `node` on its veth while `traffic` runs: tcpdump's lines.
fn outgoing(node: &Node, traffic: impl FnOnce()) -> Vec<String> {
    let capture = node
        .netns
        .command("tcpdump")
        .args(["-nn", "-l", "-Q", "out", "-i", "eth0", "ip"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut capture = ChildGuard::new(capture);
    // It says "listening on eth0" once it captures (seconds under TCG).
    let mut stderr = std::io::BufReader::new(capture.take_stderr().expect("tcpdump's stderr"));
    let mut said = String::new();
    while !said.contains("listening on") {
        match std::io::BufRead::read_line(&mut stderr, &mut said) {
            Ok(0) | Err(_) => panic!("tcpdump did not start: {said}"),
            Ok(_) => {}
        }
    }
    traffic();
    thread::sleep(Duration::from_millis(300));
    capture.stop();
    let mut text = String::new();
    if let Some(mut out) = capture.take_stdout() {
        use std::io::Read as _;
        let _ = out.read_to_string(&mut text);
    }
    text.lines()
        .filter(|line| line.contains(" IP "))
        .map(str::to_owned)
        .collect()
}

/// Traffic between the nodes in `mode` crosses as ESP between the node
/// addresses and nothing else, both ways.
fn only_esp_crosses(mode: &str) {
    require_root();
    require_tools(&["tcpdump", "ping"]);
    let work = TempDir::new("ipsec").expect("workdir");
    let pair = IpsecPair::start(work.path(), mode, false).expect("two palisaded nodes");
    wait_for_ping(&pair, mode);
    for (from, to) in [(&pair.a, &pair.b), (&pair.b, &pair.a)] {
        let lines = outgoing(from, || {
            for _ in 0..3 {
                assert!(pings(&pair.a, &pair.b, mode), "ping over IPsec");
            }
        });
        assert!(lines.len() >= 3, "too little captured: {lines:?}");
        let esp = format!("{} > {}: ESP", from.underlay, to.underlay);
        for line in &lines {
            assert!(
                line.contains(&esp),
                "not ESP on the wire: {line}\n{lines:#?}"
            );
        }
    }

    // Status and metrics say the same.
    let status = encryption_status(&pair.a_daemon);
    assert_eq!(status["mode"], "ipsec", "{status}");
    let ipsec = &status["ipsec"];
    assert_eq!(ipsec["mode"], mode, "{status}");
    assert_eq!(ipsec["keys"], serde_json::json!([3]), "{status}");
    let node = &ipsec["nodes"][0];
    assert_eq!(node["name"], "b");
    assert_eq!(node["outbound_key"], 3);
    assert_eq!(node["states"], 2, "{status}");
    assert_eq!(node["states"], node["states_expected"], "{status}");
    assert_eq!(node["policies"], node["policies_expected"], "{status}");
    assert!(node["tx_bytes"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(node["rx_bytes"].as_u64().unwrap_or(0) > 0, "{status}");
    let table = pair
        .a_daemon
        .ctl(&["encryption", "status"])
        .expect("palisadectl");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("Encryption: ipsec\n") && table.contains("node: b\n"),
        "{table}"
    );
    let metrics = palisade_e2e::http_get(&pair.a.netns, METRICS, "/metrics").expect("metrics");
    for metric in [
        "palisade_ipsec_node_transmit_bytes_total{node=\"b\"}",
        "palisade_ipsec_node_outbound_key{node=\"b\"} 3",
        "palisade_ipsec_xfrm_errors_total{error=\"XfrmInNoStates\"}",
    ] {
        assert!(metrics.contains(metric), "{metric} missing:\n{metrics}");
    }
    assert!(
        !pair.logs().contains(KEY_3_HEX) && !table.contains(KEY_3_HEX),
        "the key is never logged or shown"
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces and ESP: the 6.1 guest runs it"]
fn pod_traffic_crosses_as_esp_only_in_tunnel_mode_in_a_kernel_with_esp() {
    only_esp_crosses("tunnel");
}

#[test]
#[ignore = "privileged: needs root, namespaces and ESP: the 6.1 guest runs it"]
fn node_traffic_crosses_as_esp_only_in_transport_mode_in_a_kernel_with_esp() {
    only_esp_crosses("transport");
}

/// palisade's states in `node`'s namespace (`ip xfrm state`), by their
/// request id, as `(SPI, source, destination)` lines of `ip`'s output.
fn palisade_spis(node: &Node) -> Vec<String> {
    let text = node.netns.ip(&["xfrm", "state"]).expect("ip xfrm state");
    let mut spis = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let after = |name: &str| {
            let at = fields.iter().position(|field| *field == name)?;
            fields.get(at + 1).copied()
        };
        if let (Some(spi), Some("1346456576")) = (after("spi"), after("reqid")) {
            spis.push(spi.to_owned());
        }
    }
    spis
}

/// Pings `to` from `from`'s pods ten times a second for `seconds`; returns
/// how many got no answer.
fn pings_lost(from: &Node, to: &Node, seconds: u32) -> thread::JoinHandle<u32> {
    let count = (seconds * 10).to_string();
    let mut ping = from.netns.command("ping");
    ping.args(["-n", "-q", "-i", "0.1", "-W", "1", "-c", &count])
        .args(["-I", from.pod_address, to.pod_address])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let sent = seconds * 10;
    thread::spawn(move || {
        let output = ping.output().expect("ping runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let received = text
            .split(", ")
            .find_map(|part| part.strip_suffix(" received"))
            .and_then(|number| number.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no ping summary in {text}"));
        sent - received
    })
}

fn reload(daemon: &Daemon) {
    let output = daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(output.status.success(), "{output:?}\n{}", daemon.log());
}

#[test]
#[ignore = "privileged: needs root, namespaces and ESP: the 6.1 guest runs it"]
fn a_key_rotation_under_ping_loses_at_most_two_packets_in_a_kernel_with_esp() {
    require_root();
    require_tools(&["ping"]);
    let work = TempDir::new("ipsecrot").expect("workdir");
    let pair = IpsecPair::start(work.path(), "tunnel", false).expect("two palisaded nodes");
    wait_for_ping(&pair, "tunnel");
    let lost = pings_lost(&pair.a, &pair.b, 12);
    thread::sleep(Duration::from_secs(1));

    // Key 4 beside key 3 on both nodes; each still sends with 3 to a node
    // that has not said it has 4.
    for (daemon, side) in [(&pair.a_daemon, "a"), (&pair.b_daemon, "b")] {
        daemon
            .edit_config(|config| config.nodes[0].ipsec_key = Some(3))
            .expect("config");
        write_keys(
            &pair.dir.join(side).join("ipsec.keys"),
            &format!("{KEY_3}{KEY_4}"),
        )
        .expect("key file");
        reload(daemon);
    }
    let status = encryption_status(&pair.a_daemon);
    assert_eq!(
        status["ipsec"]["keys"],
        serde_json::json!([3, 4]),
        "{status}"
    );
    assert_eq!(status["ipsec"]["nodes"][0]["outbound_key"], 3, "{status}");
    assert_eq!(status["ipsec"]["nodes"][0]["states"], 4, "{status}");
    thread::sleep(Duration::from_secs(1));

    // Every node has 4: both switch.
    for daemon in [&pair.a_daemon, &pair.b_daemon] {
        daemon
            .edit_config(|config| config.nodes[0].ipsec_key = Some(4))
            .expect("config");
        reload(daemon);
    }
    let status = encryption_status(&pair.a_daemon);
    assert_eq!(status["ipsec"]["nodes"][0]["outbound_key"], 4, "{status}");
    let policies = pair
        .a
        .netns
        .ip(&["xfrm", "policy"])
        .expect("ip xfrm policy");
    assert!(policies.contains("spi 0x04000201"), "{policies}");

    // The window (2 s) after key 4 came, key 3's states go.
    pair.a_daemon
        .wait_until(Duration::from_secs(10), "key 3 removed", || {
            palisade_spis(&pair.a)
                .iter()
                .all(|spi| spi.starts_with("0x04"))
        });
    let status = encryption_status(&pair.a_daemon);
    assert_eq!(status["ipsec"]["keys"], serde_json::json!([4]), "{status}");
    let lost = lost.join().expect("ping thread");
    assert!(
        lost <= 2,
        "{lost} pings lost across the rotation:\n{}",
        pair.logs()
    );
    assert!(pings(&pair.a, &pair.b, "tunnel"), "traffic on key 4 alone");
}

#[test]
#[ignore = "privileged: needs root, namespaces and ESP: the 6.1 guest runs it"]
fn kill_9_keeps_the_states_a_restart_adopts_them_and_cleanup_spares_others_in_a_kernel_with_esp() {
    require_root();
    require_tools(&["ping"]);
    let work = TempDir::new("ipseckill").expect("workdir");
    let mut pair = IpsecPair::start(work.path(), "tunnel", false).expect("two palisaded nodes");
    // Someone else's state and policy on A.
    add_foreign_ike_objects(
        &pair.a.netns,
        ("198.51.100.9", "198.51.100.1"),
        ("10.77.0.0/24", "10.78.0.0/24"),
    )
    .expect("another IKE daemon's state and policy");
    wait_for_ping(&pair, "tunnel");
    let before = palisade_spis(&pair.a);
    assert_eq!(before.len(), 2, "{before:?}");

    // Killed: the states stay, traffic still crosses encrypted.
    pair.a_daemon.kill();
    let lines = outgoing(&pair.a, || {
        assert!(
            pings(&pair.a, &pair.b, "tunnel"),
            "traffic while palisaded is dead"
        );
    });
    assert!(
        !lines.is_empty() && lines.iter().all(|line| line.contains(": ESP")),
        "{lines:#?}"
    );
    let sent_before = encryption_status(&pair.b_daemon)["ipsec"]["nodes"][0]["rx_bytes"]
        .as_u64()
        .unwrap_or(0);

    // Restarted: it adopts them (the kernel's counters go on, nothing is
    // replaced).
    pair.a_daemon.restart().expect("palisaded restarts");
    assert!(
        pair.a_daemon.log().contains("adopted=2"),
        "{}",
        pair.a_daemon.log()
    );
    assert_eq!(palisade_spis(&pair.a), before);
    assert!(pings(&pair.a, &pair.b, "tunnel"));
    let status = encryption_status(&pair.a_daemon);
    assert!(
        status["ipsec"]["nodes"][0]["tx_bytes"]
            .as_u64()
            .unwrap_or(0)
            >= sent_before,
        "{status}"
    );

    // Killed again and cleaned up: palisade's go, the other ones stay.
    pair.a_daemon.kill();
    let cleanup = pair.a_daemon.cleanup().expect("cleanup");
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(palisade_spis(&pair.a).is_empty());
    let states = pair.a.netns.ip(&["xfrm", "state"]).expect("ip xfrm state");
    let policies = pair
        .a
        .netns
        .ip(&["xfrm", "policy"])
        .expect("ip xfrm policy");
    assert!(states.contains(FOREIGN_SPI), "{states}");
    assert!(
        policies.contains("10.77.0.0/24") && !policies.contains(pair.b.pod_prefix),
        "{policies}"
    );

    // B stops: its states and policies go with it.
    pair.b_daemon.stop();
    assert!(palisade_spis(&pair.b).is_empty(), "{}", pair.b_daemon.log());
}

#[test]
#[ignore = "privileged: needs root, namespaces and ESP: the 6.1 guest runs it"]
fn strict_mode_drops_pod_traffic_seen_unencrypted_and_passes_what_ipsec_decrypted_in_a_kernel_with_esp()
 {
    require_root();
    require_tools(&["ping"]);
    let work = TempDir::new("ipsecstrict").expect("workdir");
    let mut pair = IpsecPair::start(work.path(), "tunnel", true).expect("two palisaded nodes");
    // Decrypted in tunnel mode, B's pings come back through A's eth0: they
    // carry the mark and pass.
    wait_for_ping(&pair, "tunnel");
    assert!(pings(&pair.b, &pair.a, "tunnel"));

    // B's IPsec goes away and B sends to A's pods in the clear.
    pair.b_daemon.stop();
    let IpsecPair { a, b, a_daemon, .. } = &pair;
    assert!(!pings(b, a, "tunnel"), "unencrypted traffic must not pass");
    let flows = a_daemon.flows(&["--verdict", "DROPPED"]).expect("flows");
    assert!(
        flows.iter().any(
            |flow| flow.drop_reason_desc.as_deref() == Some("UNENCRYPTED_TRAFFIC")
                && flow.ip.source == address(b.pod_address)
        ),
        "{flows:?}"
    );
}

#[test]
fn a_bad_key_file_stops_palisaded_with_its_line() {
    let work = TempDir::new("ipsecbad").expect("workdir");
    let keys = work.path().join("ipsec.keys");
    write_keys(
        &keys,
        &format!("# rotated 2026-12-01\n{KEY_3}4 rfc4106(gcm(aes)) 0x0102 128\n"),
    )
    .expect("key file");
    let scratch = work.path().display();
    let config = work.path().join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "[datapath]\npin_path = \"{scratch}/pins\"\n[control]\nsocket = \"{scratch}/palisade.sock\"\n[policy]\ndirectory = \"{scratch}/policies\"\nstate_directory = \"{scratch}/state\"\n\n[node]\naddresses = [\"192.0.2.1/32\"]\npod_cidrs = [\"10.99.1.0/24\"]\n\n[encryption]\nmode = \"ipsec\"\n\n[ipsec]\nkeys_file = \"{}\"\n",
            keys.display()
        ),
    )
    .expect("config");
    let stderr = refused_start(&config);
    let place = format!("{}:3:", keys.display());
    assert!(stderr.contains(&place), "{stderr}");
    assert!(
        !stderr.contains("0x0102 "),
        "keys are never shown: {stderr}"
    );

    // Readable by others: refused too.
    write_keys(&keys, KEY_3).expect("key file");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let stderr = refused_start(&config);
    assert!(
        stderr.contains("0600") || stderr.contains("mode"),
        "{stderr}"
    );

    // Tunnel mode without this node's pod CIDRs cannot work: said at once.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .expect("config")
            .replace("pod_cidrs = [\"10.99.1.0/24\"]\n", ""),
    )
    .expect("config");
    let stderr = refused_start(&config);
    assert!(stderr.contains("node.pod_cidrs"), "{stderr}");
}

/// Runs palisaded on `config`, which it must refuse; its stderr.
fn refused_start(config: &Path) -> String {
    let output = Command::new(palisade_e2e::binary("palisaded").expect("built"))
        .arg("--config")
        .arg(config)
        .output()
        .expect("palisaded runs");
    assert!(!output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
#[ignore = "privileged: needs root, namespaces and ESP: the 6.1 guest runs it"]
fn a_node_set_up_with_ip_xfrm_exchanges_pod_traffic_with_a_palisade_node_in_a_kernel_with_esp() {
    require_root();
    require_tools(&["tcpdump", "ping"]);
    let work = TempDir::new("ipsecip").expect("workdir");
    let (a, b) = routed_nodes().expect("two nodes");
    // One key for every pair (no `+`), as another implementation would
    // configure it; the SPI on the wire is the key's in the top byte and the
    // sender's last 16 address bits below.
    let key = "0x3132333435363738393a3b3c3d3e3f4041424344";
    let a_daemon = start_ipsec(
        &a,
        &b,
        &work.path().join("a"),
        &format!("5 rfc4106(gcm(aes)) {key} 128\n"),
        "tunnel",
        false,
    )
    .expect("palisaded on A");
    let xfrm = |arguments: &str| {
        let arguments: Vec<&str> = arguments.split_whitespace().collect();
        b.netns
            .ip(&arguments)
            .unwrap_or_else(|error| panic!("ip {arguments:?}: {error}"));
    };
    for (source, destination, spi) in [
        (b.underlay, a.underlay, "0x05000202"),
        (a.underlay, b.underlay, "0x05000201"),
    ] {
        xfrm(&format!(
            "xfrm state add src {source} dst {destination} proto esp spi {spi} reqid 1 mode tunnel aead rfc4106(gcm(aes)) {key} 128"
        ));
    }
    xfrm(&format!(
        "xfrm policy add src {} dst {} dir out tmpl src {} dst {} proto esp reqid 1 mode tunnel",
        b.pod_prefix, a.pod_prefix, b.underlay, a.underlay
    ));
    for direction in ["in", "fwd"] {
        xfrm(&format!(
            "xfrm policy add src {} dst {} dir {direction} tmpl src {} dst {} proto esp reqid 1 mode tunnel",
            a.pod_prefix, b.pod_prefix, a.underlay, b.underlay
        ));
    }
    let mut passed = false;
    for _ in 0..30 {
        if pings(&a, &b, "tunnel") {
            passed = true;
            break;
        }
        thread::sleep(Duration::from_millis(300));
    }
    assert!(passed, "no ping to the ip-xfrm node:\n{}", a_daemon.log());
    for (from, to) in [(&a, &b), (&b, &a)] {
        let lines = outgoing(from, || {
            assert!(pings(from, to, "tunnel"), "ping over IPsec");
        });
        let esp = format!("{} > {}: ESP", from.underlay, to.underlay);
        assert!(
            !lines.is_empty() && lines.iter().all(|line| line.contains(&esp)),
            "{lines:#?}"
        );
    }
}
