//! The WireGuard node mesh: two palisaded nodes in two namespaces joined by
//! a veth pair. Each has an address of its "pod" prefix on loopback; the other
//! node's prefix is routed through the tunnel. This host's kernel has no
//! WireGuard module, so here the tunnel is palisaded's in-process userspace
//! one; the kernel matrix runs the mesh test on Debian's kernel, with the
//! kernel's WireGuard.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use palisade_e2e::{
    TempDir, address,
    mesh::{
        Node, PalisadePair, UAPI_DIRECTORY, WireGuardGo, interface, key_pair, nodes, start_palisade,
    },
    require_root, require_tools, run,
};

/// `palisadectl wireguard status -o json` of `daemon`.
fn wireguard_status(daemon: &palisade_e2e::Daemon) -> serde_json::Value {
    let output = daemon
        .ctl(&["wireguard", "status", "-o", "json"])
        .expect("palisadectl");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// The permission bits of `path`.
fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Waits for a ping from `from` to `to`, failing with the daemons' logs.
fn wait_for_ping(from: &Node, to: &Node, logs: &dyn Fn() -> String) {
    if let Err(error) = from.wait_for_ping(to) {
        panic!("{error}:\n{}", logs());
    }
}

/// Set by the kernel matrix's guests, whose kernels have WireGuard.
const KERNEL_WIREGUARD: &str = "PALISADE_E2E_KERNEL_WIREGUARD";

/// The backend palisaded must pick: the kernel's where the kernel has
/// WireGuard (the matrix's guests), else the userspace one (this host's
/// kernel has no module).
fn expected_backend() -> &'static str {
    if std::env::var_os(KERNEL_WIREGUARD).is_some() {
        "kernel"
    } else {
        "userspace"
    }
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn two_nodes_form_a_mesh_and_only_wireguard_crosses_the_wire() {
    require_root();
    require_tools(&["wg", "tcpdump", "ping"]);
    let work = TempDir::new("wg").expect("workdir");
    let mut pair = PalisadePair::start(work.path(), false).expect("two palisaded nodes");
    let PalisadePair {
        a,
        b,
        a_keys,
        b_keys,
        a_interface,
        b_interface,
        ..
    } = &pair;
    let (a_private, a_public) = (a_keys.0.clone(), a_keys.1.clone());
    let b_public = b_keys.1.clone();
    let (a_interface, b_interface) = (a_interface.clone(), b_interface.clone());

    // Traffic between the pod prefixes goes through the tunnel and passes.
    wait_for_ping(a, b, &|| pair.logs());
    // On the wire: only UDP to and from the WireGuard port.
    let capture = b
        .netns
        .command("tcpdump")
        .args(["-nn", "-l", "-i", "eth0", "ip"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    let mut capture = palisade_e2e::ChildGuard::new(capture);
    thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert!(a.pings(b), "ping through the tunnel");
    }
    thread::sleep(Duration::from_millis(300));
    capture.stop();
    let mut text = String::new();
    if let Some(mut out) = capture.take_stdout() {
        use std::io::Read as _;
        let _ = out.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|line| line.contains(" IP ")).collect();
    assert!(lines.len() >= 6, "too little captured:\n{text}");
    for line in &lines {
        assert!(
            line.contains(".51871") && line.contains("UDP") && !line.contains("10.99."),
            "not WireGuard on the wire: {line}\n{text}"
        );
    }

    // Status, as palisadectl shows it.
    let status = wireguard_status(&pair.a_daemon);
    assert_eq!(status["public_key"], a_public.as_str());
    assert_eq!(status["listen_port"], 51871);
    assert_eq!(status["backend"], expected_backend(), "{status}");
    let peer = &status["peers"][0];
    assert_eq!(peer["name"], "peer");
    assert_eq!(peer["public_key"], b_public.as_str());
    assert_eq!(peer["allowed_ips"][0], b.pod_prefix);
    assert!(
        peer["latest_handshake_seconds_ago"].as_u64().is_some(),
        "{status}"
    );
    assert!(peer["tx_bytes"].as_u64().unwrap_or(0) > 0, "{status}");
    let table = pair
        .a_daemon
        .ctl(&["wireguard", "status"])
        .expect("palisadectl");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("node: peer") && table.contains("latest handshake:"),
        "{table}"
    );
    assert!(
        !table.contains(&a_private),
        "the private key is never shown"
    );
    // The same through the backend-neutral encryption status.
    let encryption = pair
        .a_daemon
        .ctl(&["encryption", "status", "-o", "json"])
        .expect("palisadectl");
    assert!(encryption.status.success(), "{encryption:?}");
    let encryption: serde_json::Value = serde_json::from_slice(&encryption.stdout).expect("JSON");
    assert_eq!(encryption["mode"], "wireguard", "{encryption}");
    assert_eq!(encryption["wireguard"]["public_key"], a_public.as_str());
    assert_eq!(encryption["wireguard"]["peers"][0]["name"], "peer");
    let encryption = pair
        .a_daemon
        .ctl(&["encryption", "status"])
        .expect("palisadectl");
    let encryption = String::from_utf8_lossy(&encryption.stdout);
    assert!(
        encryption.starts_with("Encryption: wireguard\n") && encryption.contains("node: peer"),
        "{encryption}"
    );

    // Tunnel metrics, per node.
    let metrics =
        palisade_e2e::http_get(&a.netns, palisade_e2e::mesh::METRICS, "/metrics").expect("metrics");
    assert!(metrics.contains("palisade_wireguard_peers 1"), "{metrics}");
    for metric in [
        "palisade_wireguard_peer_transmit_bytes_total{node=\"peer\"}",
        "palisade_wireguard_peer_receive_bytes_total{node=\"peer\"}",
        "palisade_wireguard_peer_handshake_age_seconds{node=\"peer\"}",
    ] {
        assert!(metrics.contains(metric), "{metric} missing:\n{metrics}");
    }

    // The standard tools see it too (UAPI).
    let wg = run(a.netns.command("wg").args(["show", &a_interface])).expect("wg show");
    assert!(wg.contains(&b_public), "{wg}");
    assert!(
        !pair.a_daemon.log().contains(&a_private),
        "the private key is never logged"
    );
    let a_netns = a.netns.name().to_owned();

    // Stopping palisaded takes its tunnel down: interface and UAPI socket.
    for (daemon, name) in [
        (&mut pair.a_daemon, &a_interface),
        (&mut pair.b_daemon, &b_interface),
    ] {
        daemon.stop();
        let socket = Path::new(UAPI_DIRECTORY).join(format!("{name}.sock"));
        assert!(
            !socket.exists(),
            "{} left behind:\n{}",
            socket.display(),
            daemon.log()
        );
    }
    let link = Command::new("ip")
        .args(["-n", &a_netns, "link", "show", &a_interface])
        .output()
        .expect("ip");
    assert!(
        !link.status.success(),
        "the tunnel interface is still there:\n{}",
        pair.logs()
    );
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_wireguard_go_peer_configured_with_wg_talks_to_a_palisade_node() {
    require_root();
    require_tools(&["wg", "wireguard-go", "ping"]);
    let (a, b) = nodes().expect("two nodes");
    let work = TempDir::new("wggo").expect("workdir");
    let (a_private, a_public) = key_pair().expect("a key pair");
    let (b_private, b_public) = key_pair().expect("a key pair");
    let a_interface = interface("p");
    let daemon = start_palisade(
        &a,
        &a_interface,
        &a_private,
        &b,
        &b_public,
        &work.path().join("a"),
    )
    .expect("palisaded starts");

    // B: stock wireguard-go, configured with wg and ip as an operator would.
    let go_interface = interface("g");
    let _go = WireGuardGo::start(&b, &go_interface, &b_private, &a, &a_public, work.path())
        .expect("wireguard-go");
    wait_for_ping(&a, &b, &|| daemon.log());
    wait_for_ping(&b, &a, &|| daemon.log());
    let shown = run(b
        .netns
        .command("wg")
        .args(["show", &go_interface, "latest-handshakes"]))
    .expect("wg show");
    assert!(shown.contains(&a_public), "{shown}");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_node_killed_and_restarted_rejoins_the_mesh_with_its_key() {
    require_root();
    require_tools(&["wg", "ping"]);
    let work = TempDir::new("wgre").expect("workdir");
    let mut pair = PalisadePair::start(work.path(), false).expect("two palisaded nodes");
    wait_for_ping(&pair.a, &pair.b, &|| pair.logs());
    pair.a_daemon
        .kill_and_restart()
        .expect("palisaded restarts");
    wait_for_ping(&pair.a, &pair.b, &|| pair.logs());
    let (a_daemon, a_public) = (&pair.a_daemon, &pair.a_keys.1);
    let status = wireguard_status(a_daemon);
    assert_eq!(status["public_key"], a_public.as_str(), "the key is kept");
}

#[test]
fn bad_keys_endpoints_and_prefixes_stop_palisaded_with_their_position() {
    let work = TempDir::new("wgbad").expect("workdir");
    let config = work.path().join("bad.toml");
    std::fs::write(
        &config,
        "[encryption]\nmode = \"wireguard\"\n\n[[nodes]]\nname = \"b\"\npod_cidrs = [\"10.99.2.0/24\"]\n[nodes.wireguard]\nendpoint = \"192.0.2.2:51871\"\npublic_key = \"not-a-key\"\n",
    )
    .expect("config");
    let stderr = refused_start(&config);
    assert!(
        stderr.contains(
            "bad.toml:9:14: nodes[0].wireguard.public_key: invalid WireGuard key \"not-a-key\""
        ),
        "{stderr}"
    );
    // One node list: with WireGuard on, a node without its keys is refused
    // before anything is loaded, not left in the clear. (Were it not, the
    // daemon would stop at the pin path, which is no bpffs, and say so.)
    let scratch = work.path().display();
    std::fs::write(
        &config,
        format!(
            "[datapath]\npin_path = \"{scratch}/pins\"\n[control]\nsocket = \"{scratch}/palisade.sock\"\n[policy]\ndirectory = \"{scratch}/policies\"\nstate_directory = \"{scratch}/state\"\n\n[encryption]\nmode = \"wireguard\"\n\n[[nodes]]\nname = \"c\"\naddresses = [\"192.0.2.3/32\"]\n"
        ),
    )
    .expect("config");
    let stderr = refused_start(&config);
    assert!(
        stderr.contains("bad.toml: [[nodes]] \"c\" has no [nodes.wireguard] table"),
        "{stderr}"
    );
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

/// Pings `to` from `from`'s pods ten times a second for `seconds`; returns
/// how many of the pings got no answer.
fn pings_lost(from: &Node, to: &Node, seconds: u32) -> std::thread::JoinHandle<u32> {
    let count = (seconds * 10).to_string();
    let mut ping = from.netns.command("ping");
    ping.args(["-n", "-q", "-i", "0.1", "-W", "1", "-c", &count])
        .args(["-I", from.pod_address, to.pod_address])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let sent: u32 = seconds * 10;
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

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_staged_rotation_switches_the_other_node_at_the_first_handshake() {
    let test = "a_staged_rotation_switches_the_other_node_at_the_first_handshake";
    require_root();
    require_tools(&["wg", "ping"]);
    let work = TempDir::new("wgstage").expect("workdir");
    let pair = PalisadePair::start(work.path(), false).expect("two palisaded nodes");
    let PalisadePair {
        a,
        b,
        a_daemon,
        b_daemon,
        a_keys,
        ..
    } = &pair;
    let a_public = a_keys.1.clone();
    wait_for_ping(a, b, &|| pair.logs());

    // 1. A stages its next key; the tunnel keeps the current one.
    let output = a_daemon
        .ctl(&["wireguard", "rotate-key", "--stage", "-o", "json"])
        .expect("palisadectl");
    assert!(output.status.success(), "{output:?}");
    let staged: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(staged["staged"], true);
    let next = staged["public_key"].as_str().expect("a key").to_owned();
    assert_ne!(next, a_public);
    let published = std::fs::read_to_string(work.path().join("a/wireguard.pub.next"));
    assert_eq!(published.expect("pub.next").trim(), next);
    let staged_file = work.path().join("a/wireguard.key.next");
    assert_eq!(file_mode(&staged_file), 0o600);
    let a_status = wireguard_status(a_daemon);
    assert_eq!(a_status["public_key"], a_public.as_str());
    assert_eq!(a_status["staged_public_key"], next.as_str());
    assert!(a.pings(b), "staging changes nothing on the wire");

    // 2. B lists it as A's next key: a standby peer, nothing else changes.
    let b_config = work.path().join("b/palisade.toml");
    let text = std::fs::read_to_string(&b_config).expect("b's config");
    let current_line = format!("public_key = \"{a_public}\"");
    assert!(text.contains(&current_line), "{text}");
    let with_next = text.replace(
        &current_line,
        &format!("{current_line}\nnext_public_key = \"{next}\""),
    );
    std::fs::write(&b_config, &with_next).expect("b's config");
    let reloaded = b_daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(reloaded.status.success(), "{reloaded:?}");
    // At once: the reload only added a peer, A's session went on.
    assert!(a.pings(b), "the reload broke the tunnel:\n{}", pair.logs());
    let b_status = wireguard_status(b_daemon);
    assert_eq!(b_status["peers"][0]["public_key"], a_public.as_str());
    assert_eq!(b_status["peers"][0]["next_public_key"], next.as_str());

    // 3. A switches under a steady ping: B moves A's prefixes to the new key
    // at its first handshake.
    let lost = pings_lost(a, b, 6);
    thread::sleep(Duration::from_secs(1));
    let output = a_daemon
        .ctl(&["wireguard", "rotate-key", "-o", "json"])
        .expect("palisadectl");
    assert!(output.status.success(), "{output:?}");
    let rotated: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        rotated["public_key"],
        next.as_str(),
        "the staged key is used"
    );
    assert_eq!(rotated["staged"], false);
    let lost = lost.join().expect("ping thread");
    eprintln!("{test}: {lost} of 60 pings lost across the switch");
    assert!(
        lost <= 10,
        "{lost} pings (100 ms apart) lost across the switch:\n{}",
        pair.logs()
    );
    let b_status = wireguard_status(b_daemon);
    assert_eq!(b_status["peers"][0]["public_key"], next.as_str());
    assert!(b_status["peers"][0].get("next_public_key").is_none());
    assert!(!staged_file.exists(), "the used staged key is removed");
    assert!(
        b_daemon
            .log()
            .contains("node switched to its next WireGuard key")
    );

    // 4. B's configuration catches up; the reload changes nothing.
    let caught_up = text.replace(&current_line, &format!("public_key = \"{next}\""));
    std::fs::write(&b_config, caught_up).expect("b's config");
    let reloaded = b_daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(reloaded.status.success(), "{reloaded:?}");
    assert!(a.pings(b), "the tunnel stays up");
    assert_eq!(
        wireguard_status(b_daemon)["peers"][0]["public_key"],
        next.as_str()
    );
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_rotated_key_is_saved_and_reaches_the_other_node_by_reload() {
    require_root();
    require_tools(&["wg", "ping"]);
    let work = TempDir::new("wgrot").expect("workdir");
    let pair = PalisadePair::start(work.path(), false).expect("two palisaded nodes");
    let PalisadePair {
        a,
        b,
        a_daemon,
        b_daemon,
        a_keys,
        ..
    } = &pair;
    let (a_private, a_public) = (a_keys.0.clone(), a_keys.1.clone());
    wait_for_ping(a, b, &|| pair.logs());

    let output = a_daemon
        .ctl(&["wireguard", "rotate-key", "-o", "json"])
        .expect("palisadectl");
    assert!(output.status.success(), "{output:?}");
    let rotated: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let new_public = rotated["public_key"].as_str().expect("a key").to_owned();
    assert_ne!(new_public, a_public);
    let key_file = work.path().join("a/wireguard.key");
    let saved = std::fs::read_to_string(&key_file).expect("key file");
    assert_ne!(saved.trim(), a_private, "the new key is saved");
    assert_eq!(file_mode(&key_file), 0o600);
    let published = std::fs::read_to_string(work.path().join("a/wireguard.pub")).expect("pub");
    assert_eq!(published.trim(), new_public);
    assert!(
        !a_daemon.log().contains(saved.trim()),
        "the key is never logged"
    );

    // B learns the new key from its configuration, by reload.
    let b_config = work.path().join("b/palisade.toml");
    let text = std::fs::read_to_string(&b_config).expect("b's config");
    std::fs::write(&b_config, text.replace(&a_public, &new_public)).expect("b's config");
    let reloaded = b_daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(reloaded.status.success(), "{reloaded:?}");
    wait_for_ping(a, b, &|| format!("{}\n{}", a_daemon.log(), b_daemon.log()));
    let status = wireguard_status(b_daemon);
    assert_eq!(status["peers"][0]["public_key"], new_public.as_str());

    // A configuration that no longer parses refuses the reload.
    std::fs::write(&b_config, "[[nodes]]\nname = 1\n").expect("bad config");
    let refused = b_daemon.ctl(&["reload"]).expect("palisadectl");
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(a.pings(b), "the tunnel stays as it was");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn strict_mode_drops_a_peers_traffic_seen_unencrypted_and_says_why() {
    require_root();
    require_tools(&["wg", "ping"]);
    let work = TempDir::new("wgstrict").expect("workdir");
    let mut pair = PalisadePair::start(work.path(), true).expect("two palisaded nodes");
    wait_for_ping(&pair.a, &pair.b, &|| pair.logs());

    // B's tunnel goes away and B sends to A's pods in the clear.
    pair.b_daemon.stop();
    let PalisadePair { a, b, a_daemon, .. } = &pair;
    b.netns
        .ip(&["route", "replace", a.pod_prefix, "via", a.underlay])
        .expect("route in the clear");
    assert!(!b.pings(a), "unencrypted traffic must not pass");
    let flows = a_daemon.flows(&["--verdict", "DROPPED"]).expect("flows");
    assert!(
        flows.iter().any(
            |flow| flow.drop_reason_desc.as_deref() == Some("UNENCRYPTED_TRAFFIC")
                && flow.ip.source == address(b.pod_address)
        ),
        "{flows:?}"
    );
    let counters = a_daemon.status().expect("status").counters;
    assert!(
        counters.ingress.dropped_unencrypted.packets > 0,
        "{counters:?}"
    );

    // Strict mode follows the configuration on reload.
    let a_config = work.path().join("a/palisade.toml");
    let text = std::fs::read_to_string(&a_config).expect("A's config");
    assert!(text.contains("strict = true"), "{text}");
    std::fs::write(&a_config, text.replace("strict = true", "strict = false")).expect("config");
    let reloaded = a_daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(reloaded.status.success(), "{reloaded:?}");
    let before = counters.ingress.dropped_unencrypted.packets;
    let _ = b.pings(a);
    let after = a_daemon.status().expect("status").counters;

    assert_eq!(
        after.ingress.dropped_unencrypted.packets, before,
        "no strict drops once strict mode is off"
    );
}
