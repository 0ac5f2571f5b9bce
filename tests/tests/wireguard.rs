//! The WireGuard node mesh: two palisaded nodes in two namespaces joined by
//! a veth pair. Each has an address of its "pod" prefix on loopback; the other
//! node's prefix is routed through the tunnel. This kernel has no WireGuard
//! module, so here the tunnel is palisaded's in-process userspace one.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use palisade_e2e::{Daemon, Netns, TempDir, have_root, run};

/// A node of the test mesh.
struct Node {
    netns: Netns,
    underlay: &'static str,
    pod_address: &'static str,
    pod_prefix: &'static str,
}

/// A fresh WireGuard key pair from `wg genkey | wg pubkey`.
fn key_pair() -> (String, String) {
    let private = run(Command::new("wg").arg("genkey")).expect("wg genkey");
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    {
        use std::io::Write as _;
        let mut stdin = pubkey.stdin.take().expect("stdin");
        stdin
            .write_all(private.as_bytes())
            .expect("key to wg pubkey");
    }
    let public = pubkey.wait_with_output().expect("wg pubkey output");
    (
        private.trim().to_owned(),
        String::from_utf8_lossy(&public.stdout).trim().to_owned(),
    )
}

fn config(
    interface: &str,
    key_file: &Path,
    peer_name: &str,
    peer_endpoint: &str,
    peer_key: &str,
    peer_prefix: &str,
) -> String {
    format!(
        "[datapath]\ninterfaces = [\"eth0\"]\n\n[encryption]\nmode = \"wireguard\"\n\n[wireguard]\ninterface = \"{interface}\"\nprivate_key_file = \"{}\"\n\n[[nodes]]\nname = \"{peer_name}\"\nendpoint = \"{peer_endpoint}:51871\"\npublic_key = \"{peer_key}\"\nallowed_ips = [\"{peer_prefix}\"]\n",
        key_file.display()
    )
}

fn have_tools(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} needs {tool}; `cargo xtask setup` installs it"
            );
            eprintln!("SKIPPED {test}: {tool} is not installed");
            return false;
        }
    }
    true
}

fn ping(from: &Node, to: &Node) -> bool {
    from.netns
        .command("ping")
        .args(["-c", "1", "-W", "1", "-I", from.pod_address, to.pod_address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Two namespaces joined by a veth pair (192.0.2.1 and .2), each with an
/// address of its pod prefix on loopback.
fn nodes() -> (Node, Node) {
    let a = Node {
        netns: Netns::new("wga").expect("namespace"),
        underlay: "192.0.2.1",
        pod_address: "10.99.1.1",
        pod_prefix: "10.99.1.0/24",
    };
    let b = Node {
        netns: Netns::new("wgb").expect("namespace"),
        underlay: "192.0.2.2",
        pod_address: "10.99.2.1",
        pod_prefix: "10.99.2.0/24",
    };
    a.netns
        .ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            b.netns.name(),
        ])
        .expect("veth pair");
    for node in [&a, &b] {
        node.netns
            .ip(&[
                "addr",
                "add",
                &format!("{}/24", node.underlay),
                "dev",
                "eth0",
            ])
            .expect("underlay address");
        node.netns.ip(&["link", "set", "eth0", "up"]).expect("up");
        // The node's "pods": one address of its prefix, on loopback.
        node.netns
            .ip(&[
                "addr",
                "add",
                &format!("{}/32", node.pod_address),
                "dev",
                "lo",
            ])
            .expect("pod address");
    }
    (a, b)
}

/// Interface names are global to the UAPI socket directory
/// (/var/run/wireguard/NAME.sock): unique per process and call.
fn interface(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("pwg{}{n}{role}", std::process::id() % 100_000)
}

/// Starts palisaded on `node` with `private` as its key and `peer` as the
/// one other node, with files in `dir`.
fn start_palisade(
    node: &Node,
    interface: &str,
    private: &str,
    peer: &Node,
    peer_public: &str,
    dir: &Path,
) -> Daemon {
    std::fs::create_dir_all(dir).expect("node dir");
    let policies = dir.join("policies.d");
    std::fs::create_dir_all(&policies).expect("policy dir");
    let key_file = dir.join("wireguard.key");
    std::fs::write(&key_file, format!("{private}\n")).expect("key file");
    let config_file = dir.join("config.toml");
    std::fs::write(
        &config_file,
        config(
            interface,
            &key_file,
            "peer",
            peer.underlay,
            peer_public,
            peer.pod_prefix,
        ),
    )
    .expect("config");
    Daemon::start(&node.netns, &config_file, &policies, dir).expect("palisaded starts")
}

/// Waits up to 15 s for a ping from `from`'s pods to `to`'s through the tunnel.
fn wait_for_ping(from: &Node, to: &Node, logs: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ping(from, to) {
        assert!(
            Instant::now() < deadline,
            "no ping through the tunnel:\n{}",
            logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_nodes_form_a_mesh_and_only_wireguard_crosses_the_wire() {
    let test = "two_nodes_form_a_mesh_and_only_wireguard_crosses_the_wire";
    if !have_root(test) || !have_tools(test, &["wg", "tcpdump", "ping"]) {
        return;
    }
    let (a, b) = nodes();
    let work = TempDir::new("wg").expect("workdir");
    let (a_private, a_public) = key_pair();
    let (b_private, b_public) = key_pair();
    let (a_interface, b_interface) = (interface("a"), interface("b"));
    let mut daemons = [
        start_palisade(
            &a,
            &a_interface,
            &a_private,
            &b,
            &b_public,
            &work.path().join("a"),
        ),
        start_palisade(
            &b,
            &b_interface,
            &b_private,
            &a,
            &a_public,
            &work.path().join("b"),
        ),
    ];

    // Traffic between the pod prefixes goes through the tunnel and passes.
    wait_for_ping(&a, &b, &|| {
        format!("{}\n{}", daemons[0].log(), daemons[1].log())
    });
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
        assert!(ping(&a, &b), "ping through the tunnel");
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
    let output = daemons[0]
        .ctl(&["wireguard", "status", "-o", "json"])
        .expect("palisadectl");
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(status["public_key"], a_public.as_str());
    assert_eq!(status["listen_port"], 51871);
    assert_eq!(
        status["backend"], "userspace",
        "this kernel has no WireGuard"
    );
    let peer = &status["peers"][0];
    assert_eq!(peer["name"], "peer");
    assert_eq!(peer["public_key"], b_public.as_str());
    assert_eq!(peer["allowed_ips"][0], b.pod_prefix);
    assert!(
        peer["latest_handshake_seconds_ago"].as_u64().is_some(),
        "{status}"
    );
    assert!(peer["tx_bytes"].as_u64().unwrap_or(0) > 0, "{status}");
    let table = daemons[0]
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

    // The standard tools see it too (UAPI).
    let wg = run(a.netns.command("wg").args(["show", &a_interface])).expect("wg show");
    assert!(wg.contains(&b_public), "{wg}");
    assert!(
        !daemons[0].log().contains(&a_private),
        "the private key is never logged"
    );

    // Stopping palisaded takes its tunnel down: interface and UAPI socket.
    for (daemon, name) in daemons.iter_mut().zip([&a_interface, &b_interface]) {
        daemon.stop();
        let socket = Path::new("/var/run/wireguard").join(format!("{name}.sock"));
        assert!(
            !socket.exists(),
            "{} left behind:\n{}",
            socket.display(),
            daemon.log()
        );
    }
    assert!(a.netns.ip(&["link", "show", &a_interface]).is_err());
}

#[test]
fn a_wireguard_go_peer_configured_with_wg_talks_to_a_palisade_node() {
    let test = "a_wireguard_go_peer_configured_with_wg_talks_to_a_palisade_node";
    if !have_root(test) || !have_tools(test, &["wg", "wireguard-go", "ping"]) {
        return;
    }
    let (a, b) = nodes();
    let work = TempDir::new("wggo").expect("workdir");
    let (a_private, a_public) = key_pair();
    let (b_private, b_public) = key_pair();
    let a_interface = interface("p");
    let daemon = start_palisade(
        &a,
        &a_interface,
        &a_private,
        &b,
        &b_public,
        &work.path().join("a"),
    );

    // B: stock wireguard-go, configured with wg and ip as an operator would.
    let go_interface = interface("g");
    let go = b
        .netns
        .command("wireguard-go")
        .args(["-f", &go_interface])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wireguard-go");
    let mut go = palisade_e2e::ChildGuard::new(go);
    let socket = Path::new("/var/run/wireguard").join(format!("{go_interface}.sock"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "wireguard-go did not start");
        thread::sleep(Duration::from_millis(50));
    }
    let key_file = work.path().join("go.key");
    std::fs::write(&key_file, format!("{b_private}\n")).expect("key");
    run(b.netns.command("wg").args([
        "set",
        &go_interface,
        "private-key",
        &key_file.display().to_string(),
        "listen-port",
        "51871",
        "peer",
        &a_public,
        "endpoint",
        &format!("{}:51871", a.underlay),
        "allowed-ips",
        a.pod_prefix,
    ]))
    .expect("wg set");
    b.netns
        .ip(&["link", "set", &go_interface, "up"])
        .expect("up");
    b.netns
        .ip(&["route", "add", a.pod_prefix, "dev", &go_interface])
        .expect("route");

    wait_for_ping(&a, &b, &|| daemon.log());
    wait_for_ping(&b, &a, &|| daemon.log());
    let shown = run(b
        .netns
        .command("wg")
        .args(["show", &go_interface, "latest-handshakes"]))
    .expect("wg show");
    assert!(shown.contains(&a_public), "{shown}");
    go.stop();
    let _ = std::fs::remove_file(&socket);
}

#[test]
fn a_node_killed_and_restarted_rejoins_the_mesh_with_its_key() {
    let test = "a_node_killed_and_restarted_rejoins_the_mesh_with_its_key";
    if !have_root(test) || !have_tools(test, &["wg", "ping"]) {
        return;
    }
    let (a, b) = nodes();
    let work = TempDir::new("wgre").expect("workdir");
    let (a_private, a_public) = key_pair();
    let (b_private, b_public) = key_pair();
    let mut a_daemon = start_palisade(
        &a,
        &interface("a"),
        &a_private,
        &b,
        &b_public,
        &work.path().join("a"),
    );
    let b_daemon = start_palisade(
        &b,
        &interface("b"),
        &b_private,
        &a,
        &a_public,
        &work.path().join("b"),
    );
    wait_for_ping(&a, &b, &|| a_daemon.log());
    a_daemon.kill_and_restart().expect("palisaded restarts");
    wait_for_ping(&a, &b, &|| {
        format!("{}\n{}", a_daemon.log(), b_daemon.log())
    });
    let output = a_daemon
        .ctl(&["wireguard", "status", "-o", "json"])
        .expect("palisadectl");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(status["public_key"], a_public.as_str(), "the key is kept");
}

#[test]
fn bad_keys_endpoints_and_prefixes_stop_palisaded_with_their_position() {
    let work = TempDir::new("wgbad").expect("workdir");
    let config = work.path().join("bad.toml");
    std::fs::write(
        &config,
        "[encryption]\nmode = \"wireguard\"\n\n[[nodes]]\nname = \"b\"\nendpoint = \"192.0.2.2:51871\"\npublic_key = \"not-a-key\"\nallowed_ips = [\"10.99.2.0/24\"]\n",
    )
    .expect("config");
    let output = Command::new(palisade_e2e::binary("palisaded").expect("built"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("palisaded runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:7:14: nodes[0].public_key: invalid WireGuard key \"not-a-key\""),
        "{stderr}"
    );
}

#[test]
fn a_rotated_key_is_saved_and_reaches_the_other_node_by_reload() {
    let test = "a_rotated_key_is_saved_and_reaches_the_other_node_by_reload";
    if !have_root(test) || !have_tools(test, &["wg", "ping"]) {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let (a, b) = nodes();
    let work = TempDir::new("wgrot").expect("workdir");
    let (a_private, a_public) = key_pair();
    let (b_private, b_public) = key_pair();
    let a_daemon = start_palisade(
        &a,
        &interface("a"),
        &a_private,
        &b,
        &b_public,
        &work.path().join("a"),
    );
    let b_daemon = start_palisade(
        &b,
        &interface("b"),
        &b_private,
        &a,
        &a_public,
        &work.path().join("b"),
    );
    wait_for_ping(&a, &b, &|| a_daemon.log());

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
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
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
    wait_for_ping(&a, &b, &|| {
        format!("{}\n{}", a_daemon.log(), b_daemon.log())
    });
    let status = b_daemon
        .ctl(&["wireguard", "status", "-o", "json"])
        .expect("palisadectl");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(status["peers"][0]["public_key"], new_public.as_str());

    // A configuration that no longer parses refuses the reload.
    std::fs::write(&b_config, "[[nodes]]\nname = 1\n").expect("bad config");
    let refused = b_daemon.ctl(&["reload"]).expect("palisadectl");
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(ping(&a, &b), "the tunnel stays as it was");
}
