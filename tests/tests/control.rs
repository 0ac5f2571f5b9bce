//! End to end through the real control socket: who may use it, safe apply
//! (confirm or roll back), persistence across restarts, the policy, diff,
//! reload and conntrack commands, and a storm of random requests.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use palisade_api::{
    ConnectionState, ConntrackEntry, ConntrackList, DiffResponse, PolicyList, PolicySource,
    TrafficDirection, Verdict,
};
use palisade_e2e::{
    Connect, Daemon, EchoServer, Listener, TempDir, Topology, address, allow_from_policy, echoes,
    repo, require_root, tcp_stream,
};

const SSH: u16 = 22;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
/// `nogroup` on Debian: the read group these tests configure.
const READ_GID: u32 = 65534;
/// A uid and gid no account has.
const STRANGER: u32 = 4242;

/// A work directory with the example config (plus `extra` config lines) and
/// a copy of the example policy directory.
fn setup(name: &str, extra: &str) -> (TempDir, PathBuf, PathBuf) {
    let workdir = TempDir::new(name).expect("workdir");
    let example = std::fs::read_to_string(repo().join("etc/palisade.toml")).expect("config");
    let config = workdir.path().join("config.toml");
    std::fs::write(&config, format!("{example}\n{extra}")).expect("config");
    let policies = workdir.path().join("policies.d");
    std::fs::create_dir(&policies).expect("policy dir");
    std::fs::copy(
        repo().join("etc/policies.d/host-ssh-from-bastion.toml"),
        policies.join("host-ssh-from-bastion.toml"),
    )
    .expect("example policy");
    (workdir, config, policies)
}

fn start(topology: &Topology, workdir: &TempDir, config: &Path, policies: &Path) -> Daemon {
    Daemon::start(&topology.node, config, policies, workdir.path()).expect("palisaded starts")
}

/// stdout of a successful run; panics with stderr otherwise.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "palisadectl failed ({:?}): {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Exit status and stderr of a run expected to fail.
fn failed(output: &Output) -> (Option<i32>, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_policy(workdir: &TempDir, name: &str, text: &str) -> String {
    let path = workdir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("policy file");
    path.display().to_string()
}

/// A policy file letting the outsider in; returns its path.
fn allow_outsider(workdir: &TempDir) -> String {
    write_policy(
        workdir,
        "allow-outsider",
        &allow_from_policy("allow-outsider", "10.200.0.100/32"),
    )
}

fn list(daemon: &Daemon) -> PolicyList {
    serde_json::from_str(&ok(daemon
        .ctl(&["policy", "list", "-o", "json"])
        .expect("ctl")))
    .expect("policy list JSON")
}

fn names(list: &PolicyList) -> Vec<&str> {
    list.policies.iter().map(|p| p.name.as_str()).collect()
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn only_root_and_the_configured_groups_may_use_the_socket() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("authz", "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("[control]\n", "[control]\ngroup = \"nogroup\"\n"),
    )
    .expect("config");
    let daemon = start(&topology, &workdir, &config, &policies);
    let outsider = allow_outsider(&workdir);

    // The kernel refuses a stranger: the socket is 0660 root:nogroup.
    let stranger = daemon
        .ctl_as(STRANGER, STRANGER, &[], &["status"])
        .expect("ctl");
    let (code, stderr) = failed(&stranger);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");

    // With the socket opened to everyone, palisaded itself still refuses.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let stranger = daemon
        .ctl_as(STRANGER, STRANGER, &[], &["status"])
        .expect("ctl");
    let (code, stderr) = failed(&stranger);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains(
            "uid 4242 may not read palisade's state: it needs root or membership of group nogroup"
        ),
        "{stderr}"
    );
    assert!(daemon.log().contains("control request refused"));

    // The read group reads, by primary group and by supplementary group ...
    ok(daemon
        .ctl_as(READ_GID, READ_GID, &[], &["status"])
        .expect("ctl"));
    ok(daemon
        .ctl_as(STRANGER, STRANGER, &[READ_GID], &["policy", "list"])
        .expect("ctl"));
    // ... but does not change anything.
    let apply = daemon
        .ctl_as(READ_GID, READ_GID, &[], &["apply", "-f", &outsider])
        .expect("ctl");
    let (code, stderr) = failed(&apply);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("may not change palisade's rules"),
        "{stderr}"
    );
    assert_eq!(daemon.status().expect("status").generation, 1);
    // Root may.
    ok(daemon.ctl(&["apply", "-f", &outsider]).expect("ctl"));
    assert_eq!(daemon.status().expect("status").generation, 2);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn an_unconfirmed_apply_rolls_back_at_its_deadline() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("rollback", "");
    let mut daemon = start(&topology, &workdir, &config, &policies);
    let _ssh = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let outsider = allow_outsider(&workdir);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);

    let deadline = Duration::from_secs(3);
    let applied_at = Instant::now();
    let reply = ok(daemon
        .ctl(&["apply", "-f", &outsider, "--confirm", "3s"])
        .expect("ctl"));
    assert!(reply.contains("rolls back to generation 1"), "{reply}");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);
    let status = daemon.status().expect("status");
    let pending = status.pending_confirm.expect("a pending confirm");
    assert_eq!((pending.generation, pending.rollback_to), (2, 1));
    // Other changes wait for the confirmation.
    let (code, stderr) = failed(&daemon.ctl(&["apply", "-f", &outsider]).expect("ctl"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("rolls back in"), "{stderr}");

    let rolled_back = loop {
        let status = daemon.status().expect("status");
        if status.generation == 3 {
            break applied_at.elapsed();
        }
        assert!(
            applied_at.elapsed() < deadline + Duration::from_secs(5),
            "no rollback"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        rolled_back >= deadline && rolled_back <= deadline + Duration::from_secs(1),
        "rolled back after {rolled_back:?}, deadline {deadline:?}"
    );
    let status = daemon.status().expect("status");
    assert!(status.pending_confirm.is_none());
    assert_eq!(status.policies, ["host-ssh-from-bastion"]);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
    assert!(
        daemon.log().contains("policy rolled back"),
        "{}",
        daemon.log()
    );
    let flows = daemon
        .flows_until(|flows| {
            flows.iter().any(|f| {
                f.ip.source == address(Topology::OUTSIDER)
                    && f.verdict == Verdict::Dropped
                    && f.policy_generation == 3
            })
        })
        .expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.ip.source == address(Topology::OUTSIDER)
                && f.verdict == Verdict::Dropped
                && f.policy_generation == 3),
        "the drop after the rollback shows the restored generation"
    );

    // Never confirmed, so never saved: a restart does not bring it back.
    daemon.kill_and_restart().expect("restart");
    assert_eq!(names(&list(&daemon)), ["host-ssh-from-bastion"]);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn confirmed_and_plain_applies_are_saved_and_restored_after_a_restart() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("persist", "");
    let mut daemon = start(&topology, &workdir, &config, &policies);
    let _ssh = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let outsider = allow_outsider(&workdir);
    // YAML, as kubectl and Cilium write it.
    let docs = workdir.path().join("allow-docs.yaml");
    std::fs::write(
        &docs,
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: allow-docs\nspec:\n  nodeSelector: {}\n  ingress:\n    - fromCIDR: [192.0.2.0/24]\n",
    )
    .expect("policy file");
    let docs = docs.display().to_string();

    ok(daemon
        .ctl(&["apply", "-f", &outsider, "--confirm", "60s"])
        .expect("ctl"));
    let confirmed = ok(daemon.ctl(&["confirm"]).expect("ctl"));
    assert!(
        confirmed.contains("generation 2 stays in force"),
        "{confirmed}"
    );
    assert!(daemon.status().expect("status").pending_confirm.is_none());
    let (code, stderr) = failed(&daemon.ctl(&["confirm"]).expect("ctl"));
    assert_eq!(code, Some(3));
    assert!(stderr.contains("nothing to confirm"), "{stderr}");
    ok(daemon.ctl(&["apply", "-f", &docs]).expect("ctl"));
    let saved = workdir.path().join("state/policies/allow-outsider.toml");
    let saved_text = std::fs::read_to_string(&saved).expect("saved policy");
    assert!(
        saved_text.contains("name = \"allow-outsider\"")
            && saved_text.contains("fromCIDR = [\"10.200.0.100/32\"]"),
        "{saved_text}"
    );
    assert!(
        workdir
            .path()
            .join("state/policies/allow-docs.toml")
            .exists()
    );

    daemon.kill_and_restart().expect("restart");
    let restored = list(&daemon);
    assert_eq!(
        names(&restored),
        ["allow-docs", "allow-outsider", "host-ssh-from-bastion"]
    );
    let sources: Vec<PolicySource> = restored.policies.iter().map(|p| p.source).collect();
    assert_eq!(
        sources,
        [
            PolicySource::Applied,
            PolicySource::Applied,
            PolicySource::Directory
        ]
    );
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);

    // Deleting is saved too.
    let preview = ok(daemon
        .ctl(&["policy", "delete", "allow-outsider", "--dry-run"])
        .expect("ctl"));
    assert!(preview.contains("nothing was changed"), "{preview}");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);
    ok(daemon
        .ctl(&["policy", "delete", "allow-outsider"])
        .expect("ctl"));
    assert!(!saved.exists());
    daemon.kill_and_restart().expect("restart");
    assert_eq!(
        names(&list(&daemon)),
        ["allow-docs", "host-ssh-from-bastion"]
    );
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);

    // Applied under a directory policy's name, it replaces that policy, and
    // keeps it replaced across a reload, which puts the directory and the
    // saved set in force again.
    let over = write_policy(
        &workdir,
        "override",
        &allow_from_policy("host-ssh-from-bastion", "10.200.0.100/32"),
    );
    ok(daemon.ctl(&["apply", "-f", &over]).expect("ctl"));
    ok(daemon.ctl(&["reload"]).expect("ctl"));
    let listed = list(&daemon);
    let overridden = listed
        .policies
        .iter()
        .find(|policy| policy.name == "host-ssh-from-bastion")
        .expect("listed");
    assert_eq!(overridden.source, PolicySource::Applied, "{listed:?}");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn policy_list_get_reload_and_bad_requests_through_the_socket() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("policies", "");
    let daemon = start(&topology, &workdir, &config, &policies);

    let listed = list(&daemon);
    assert_eq!(listed.generation, 1);
    assert_eq!(listed.policies[0].name, "host-ssh-from-bastion");
    assert!(listed.policies[0].selects_node);
    assert_eq!(listed.policies[0].rules, 1);
    let table = ok(daemon.ctl(&["policy", "list"]).expect("ctl"));
    assert!(table.starts_with("NAME"), "{table}");
    let text = ok(daemon
        .ctl(&["policy", "get", "host-ssh-from-bastion"])
        .expect("ctl"));
    assert_eq!(
        text,
        std::fs::read_to_string(policies.join("host-ssh-from-bastion.toml")).expect("file")
    );
    let yaml = ok(daemon
        .ctl(&["policy", "get", "host-ssh-from-bastion", "-o", "yaml"])
        .expect("ctl"));
    assert!(yaml.contains("name: host-ssh-from-bastion"), "{yaml}");
    let status = ok(daemon.ctl(&["status", "-o", "yaml"]).expect("ctl"));
    assert!(status.contains("generation: 1"), "{status}");
    // Encryption off: the neutral status says so, WireGuard's refuses.
    let encryption = ok(daemon
        .ctl(&["encryption", "status", "-o", "json"])
        .expect("ctl"));
    let encryption: serde_json::Value = serde_json::from_str(&encryption).expect("JSON");
    assert_eq!(encryption, serde_json::json!({ "mode": "disabled" }));
    let (code, stderr) = failed(&daemon.ctl(&["wireguard", "status"]).expect("ctl"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("WireGuard is not in use"), "{stderr}");
    let kernel = daemon.status().expect("status").kernel;
    assert!(kernel.bpffs && !kernel.release.is_empty(), "{kernel:?}");
    let table = ok(daemon.ctl(&["status"]).expect("ctl"));
    assert!(
        table.contains("Kernel:") && table.contains("Failsafe:"),
        "{table}"
    );

    // Names not in force, and invalid files, change nothing (exit 3).
    for args in [
        &["policy", "get", "nope"][..],
        &["policy", "delete", "nope"],
    ] {
        let (code, stderr) = failed(&daemon.ctl(args).expect("ctl"));
        assert_eq!(code, Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("no policy named \"nope\""), "{stderr}");
    }
    let bad = write_policy(
        &workdir,
        "bad",
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"bad\" }\n[spec]\nnodeSelector = {}\n[[spec.ingress]]\nfromCIDR = [\"10.0.0.0/33\"]\n",
    );
    for args in [&["apply", "-f", &bad][..], &["diff", "-f", &bad]] {
        let (code, stderr) = failed(&daemon.ctl(args).expect("ctl"));
        assert_eq!(code, Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("bad.toml:6:13"), "{stderr}");
    }
    assert_eq!(daemon.status().expect("status").generation, 1);

    // Reload through the socket and by SIGHUP picks up the directory.
    std::fs::write(
        policies.join("docs.toml"),
        allow_from_policy("allow-docs", "192.0.2.0/24"),
    )
    .expect("file");
    let reloaded = ok(daemon.ctl(&["reload"]).expect("ctl"));
    assert!(reloaded.contains("allow-docs"), "{reloaded}");
    std::fs::write(
        policies.join("more.toml"),
        allow_from_policy("allow-more", "198.51.100.0/24"),
    )
    .expect("file");
    daemon.hang_up().expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !names(&list(&daemon)).contains(&"allow-more") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        thread::sleep(Duration::from_millis(50));
    }
    // A broken directory is refused and leaves the rules in force.
    let generation = daemon.status().expect("status").generation;
    std::fs::copy(&bad, policies.join("zz-bad.toml")).expect("file");
    let (code, stderr) = failed(&daemon.ctl(&["reload"]).expect("ctl"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("zz-bad.toml:6:13"), "{stderr}");
    assert_eq!(daemon.status().expect("status").generation, generation);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn diff_lists_a_recent_flow_the_new_policy_would_block() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("diff", "");
    let daemon = start(&topology, &workdir, &config, &policies);
    let _ssh = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
    daemon
        .flows_until(|flows| {
            flows
                .iter()
                .any(|f| f.ip.source == address(Topology::BASTION))
        })
        .expect("flows");
    let deny = write_policy(
        &workdir,
        "deny-bastion",
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"deny-bastion\" }\n[spec]\nnodeSelector = {}\n[[spec.ingressDeny]]\nfromCIDR = [\"10.200.0.10/32\"]\ntoPorts = [{ ports = [{ port = \"22\", protocol = \"TCP\" }] }]\n",
    );
    let diff: DiffResponse = serde_json::from_str(&ok(daemon
        .ctl(&["diff", "-f", &deny, "-o", "json"])
        .expect("ctl")))
    .expect("diff JSON");
    assert_eq!(
        diff.added,
        ["ingress deny 10.200.0.10/32 tcp/22 (deny-bastion spec.ingressDeny[0])"]
    );
    assert!(diff.removed.is_empty());
    assert_eq!(diff.changed_flows.len(), 1, "{diff:#?}");
    let change = &diff.changed_flows[0];
    assert_eq!(change.flow.ip.source, address(Topology::BASTION));
    assert_eq!(change.flow.verdict, Verdict::Forwarded);
    assert_eq!(change.new_verdict, Verdict::Dropped);
    assert_eq!(change.new_drop_reason.as_deref(), Some("POLICY_DENY"));
    assert_eq!(
        change.new_rule.as_deref(),
        Some("deny-bastion spec.ingressDeny[0]")
    );
    let human = ok(daemon.ctl(&["diff", "-f", &deny]).expect("ctl"));
    assert!(human.contains("+ ingress deny 10.200.0.10/32"), "{human}");
    assert!(human.contains("=> DROPPED (POLICY_DENY)"), "{human}");
    // A diff changes nothing.
    assert_eq!(daemon.status().expect("status").generation, 1);
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn conntrack_lists_and_flushes_connections() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("conntrack", "");
    let daemon = start(&topology, &workdir, &config, &policies);
    let _echo = EchoServer::start(&topology.node, Topology::node_port(SSH)).expect("echo server");
    let mut stream = tcp_stream(
        &topology.client,
        address(Topology::BASTION),
        Topology::node_port(SSH),
        CONNECT_TIMEOUT,
    )
    .expect("connection");
    assert!(echoes(&mut stream, b"one"));
    let entries = || -> Vec<ConntrackEntry> {
        let list: ConntrackList =
            serde_json::from_str(&ok(daemon.ctl(&["ct", "list", "-o", "json"]).expect("ctl")))
                .expect("conntrack JSON");
        assert_eq!(list.entries.len(), list.total, "nothing cut off");
        list.entries
    };
    let ours = |entries: &[ConntrackEntry]| {
        entries
            .iter()
            .find(|e| e.source == address(Topology::BASTION) && e.destination_port == SSH)
            .cloned()
    };
    let entry = ours(&entries()).expect("the connection is tracked");
    assert_eq!(entry.protocol, "TCP");
    assert_eq!(entry.direction, TrafficDirection::Ingress);
    assert_eq!(entry.state, ConnectionState::Established);
    assert_eq!(entry.opened_by, "host-ssh-from-bastion spec.ingress[0]");
    assert!(entry.expires_in_seconds > 60, "{entry:?}");
    let table = ok(daemon.ctl(&["ct", "list"]).expect("ctl"));
    assert!(table.contains("10.200.0.10:"), "{table}");

    let flushed = ok(daemon.ctl(&["ct", "flush"]).expect("ctl"));
    assert!(!flushed.contains("flushed 0 "), "{flushed}");
    assert!(ours(&entries()).is_none(), "flushed");
    // The next packet is judged as a new connection: still allowed, tracked again.
    assert!(echoes(&mut stream, b"two"));
    assert!(ours(&entries()).is_some());
}

/// One random request: garbage, or HTTP with a random method, path and body.
fn random_request(random: &mut fastrand::Rng, policy: &str) -> Vec<u8> {
    const METHODS: [&str; 6] = ["GET", "POST", "DELETE", "PUT", "PATCH", "BREW"];
    const PATHS: [&str; 16] = [
        "/v1/status",
        "/v1/counters",
        "/v1/policies",
        "/v1/policies/host-ssh-from-bastion?dry_run=true",
        "/v1/policies/%2e%2e",
        "/v1/diff",
        "/v1/confirm",
        "/v1/conntrack",
        "/v1/flows?last=3",
        "/v1/flows?verdict=%ff&ip=nope",
        "/v1/endpoints",
        "/v1/endpoints/%2e%2e/eth0",
        "/v1/endpoints/abc/eth0/extra",
        "/v1/endpoints-gc",
        "/v2/status",
        "/",
    ];
    if random.usize(..10) == 0 {
        let n = random.usize(..300);
        return std::iter::repeat_with(|| random.u8(..)).take(n).collect();
    }
    let method = METHODS[random.usize(..METHODS.len())];
    let path = PATHS[random.usize(..PATHS.len())];
    let body: Vec<u8> = match random.usize(..6) {
        0 => Vec::new(),
        5 => {
            let host_interface = ["lo", "eth0", "no/such", ""][random.usize(..4)];
            serde_json::to_vec(&serde_json::json!({
            "container_id": "x".repeat(random.usize(..300)),
            "interface": "eth0",
            "network": "pods",
            "netns": "/proc/1/ns/net",
            "host_interface": host_interface,
            "host_ifindex": random.u32(..4),
            "addresses": ["10.0.0.1"],
            "valid": [],
            }))
            .unwrap_or_default()
        }
        1 => {
            let n = random.usize(..200);
            std::iter::repeat_with(|| random.u8(..)).take(n).collect()
        }
        2 => br#"{"files": 3}"#.to_vec(),
        _ => {
            // A dry run of the example policy with a few bytes changed.
            let mut text = policy.as_bytes().to_vec();
            for _ in 0..random.usize(..4) {
                let at = random.usize(..text.len());
                text[at] = random.u8(..);
            }
            let content = String::from_utf8_lossy(&text).into_owned();
            serde_json::to_vec(&serde_json::json!({
                "files": [{ "name": "fuzz.toml", "content": content }],
                "dry_run": true,
            }))
            .unwrap_or_default()
        }
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: palisade\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend(body);
    request
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn the_daemon_stays_up_and_correct_under_ten_thousand_random_requests() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("fuzz", "");
    let daemon = start(&topology, &workdir, &config, &policies);
    let policy =
        std::fs::read_to_string(policies.join("host-ssh-from-bastion.toml")).expect("policy");
    let mut random = fastrand::Rng::with_seed(0x5eed_1234_abcd_0001);
    let mut answered = 0;
    for _ in 0..10_000 {
        let request = random_request(&mut random, &policy);
        let mut stream = UnixStream::connect(daemon.socket()).expect("the daemon still accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // The daemon may close early on garbage; that is an answer too.
        // (No half-close: hyper takes the end of the input as the end of the
        // connection.)
        let _ = stream.write_all(&request);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        if reply.starts_with(b"HTTP/1.1 ") {
            answered += 1;
            let status = &reply[9..12];
            assert_ne!(status, b"500", "{}", String::from_utf8_lossy(&reply));
        }
    }
    assert!(answered > 8_000, "only {answered} requests were answered");
    // Still up, and nothing changed: only dry runs and reads were valid.
    let status = daemon.status().expect("status");
    assert_eq!(status.generation, 1);
    assert_eq!(status.policies, ["host-ssh-from-bastion"]);
    // The endpoint registry holds only registrations that were valid (root
    // may register its own loopback), each on an interface that exists.
    let endpoints: palisade_api::EndpointList = serde_json::from_str(&ok(daemon
        .ctl(&["endpoint", "list", "-o", "json"])
        .expect("ctl")))
    .expect("endpoint list");
    for endpoint in &endpoints.endpoints {
        assert_eq!(
            (
                endpoint.registration.host_interface.as_str(),
                endpoint.registration.host_ifindex
            ),
            ("lo", 1),
            "{endpoint:?}"
        );
    }
    let _ssh = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
}

fn write_yaml(workdir: &TempDir, name: &str, text: &str) -> String {
    let path = workdir.path().join(name);
    std::fs::write(&path, text).expect("policy file");
    path.display().to_string()
}

/// A policy that selects pods, or other nodes, applies but enforces nothing
/// here: apply says so, and status keeps saying it.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn apply_and_status_name_policies_that_enforce_nothing_on_this_node() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("unenforced", "");
    let daemon = start(&topology, &workdir, &config, &policies);
    let pods = write_yaml(
        &workdir,
        "pods.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: all-ingress-deny\nspec:\n  endpointSelector: {}\n  ingress:\n    - {}\n",
    );
    let applied = daemon.ctl(&["apply", "-f", &pods]).expect("palisadectl");
    assert!(applied.status.success(), "{applied:?}");
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(
        stderr.contains(
            "warning: default/all-ingress-deny spec enforces nothing on this node: it selects pods"
        ),
        "{stderr}"
    );
    let elsewhere = write_yaml(
        &workdir,
        "edge.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: edge-only\nspec:\n  nodeSelector:\n    matchLabels:\n      role: edge\n  ingress:\n    - {}\n",
    );
    let applied = daemon
        .ctl(&["apply", "-f", &elsewhere])
        .expect("palisadectl");
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(
        stderr.contains(
            "edge-only spec enforces nothing on this node: its nodeSelector does not match"
        ),
        "{stderr}"
    );
    let status = ok(daemon.ctl(&["status"]).expect("palisadectl"));
    assert!(
        status.contains("Not enforced:   default/all-ingress-deny spec"),
        "{status}"
    );
    assert!(
        status.contains("Not enforced:   edge-only spec"),
        "{status}"
    );
    let json = daemon.status().expect("status");
    assert_eq!(json.unenforced.len(), 2, "{:?}", json.unenforced);
}

/// Policies larger than the datapath was sized for are the user's to fix:
/// refused with 422 naming the setting, not a 500, and nothing changes.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_table_larger_than_the_maps_is_refused_as_the_users_error() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("capacity", "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("[datapath]\n", "[datapath]\npolicy_map_max = 4\n"),
    )
    .expect("config");
    let daemon = start(&topology, &workdir, &config, &policies);
    let cidrs: Vec<String> = (1..=10).map(|i| format!("\"192.0.2.{i}/32\"")).collect();
    let policy = format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"many\" }}\n[spec]\nnodeSelector = {{}}\n[[spec.ingress]]\nfromCIDR = [{}]\n",
        cidrs.join(", ")
    );
    let body =
        serde_json::json!({ "files": [{ "name": "many.toml", "content": policy }] }).to_string();
    let mut stream = UnixStream::connect(daemon.socket()).expect("the socket");
    stream
        .write_all(
            format!(
                "POST /v1/policies HTTP/1.1\r\nhost: palisade\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .expect("request sent");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 422"), "{reply}");
    assert!(reply.contains("datapath.policy_map_max = 4"), "{reply}");
    assert!(reply.contains("nothing was changed"), "{reply}");
    assert_eq!(daemon.status().expect("status").generation, 1);
}

/// Kubernetes names a CiliumNetworkPolicy by namespace and name: two of one
/// name in two namespaces, and a cluster-wide one of that name, are three
/// policies — listed, got, deleted and saved apart.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn one_name_in_two_namespaces_is_two_policies() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("namespaces", "");
    let mut daemon = start(&topology, &workdir, &config, &policies);
    let namespaced = |namespace: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web\n  namespace: {namespace}\nspec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n    - fromEndpoints: [{{}}]\n"
        )
    };
    let prod = write_yaml(&workdir, "web-prod.yaml", &namespaced("prod"));
    let staging = write_yaml(&workdir, "web-staging.yaml", &namespaced("staging"));
    let cluster = write_policy(&workdir, "web", &allow_from_policy("web", "192.0.2.0/24"));
    ok(daemon
        .ctl(&["apply", "-f", &prod, "-f", &staging, "-f", &cluster])
        .expect("ctl"));
    let sorted_names = |daemon: &Daemon| {
        let mut listed = names(&list(daemon))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        listed.sort();
        listed
    };
    let expected = ["host-ssh-from-bastion", "prod/web", "staging/web", "web"];
    assert_eq!(sorted_names(&daemon), expected);
    let got = ok(daemon.ctl(&["policy", "get", "staging/web"]).expect("ctl"));
    assert!(got.contains("namespace: staging"), "{got}");

    // Saved apart: a restart brings all three back.
    daemon.restart().expect("restart");
    assert_eq!(sorted_names(&daemon), expected);

    // Deleting one namespace's leaves the other's and the cluster-wide one.
    let deleted = ok(daemon.ctl(&["policy", "delete", "prod/web"]).expect("ctl"));
    assert!(deleted.contains("prod/web"), "{deleted}");
    assert_eq!(
        sorted_names(&daemon),
        ["host-ssh-from-bastion", "staging/web", "web"]
    );

    // The same namespace and name twice in one request is refused.
    let (code, stderr) = failed(
        &daemon
            .ctl(&["apply", "-f", &staging, "-f", &staging])
            .expect("ctl"),
    );
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("policy \"staging/web\" is given more than once"),
        "{stderr}"
    );
}

/// A policy of 100,000 one-CIDR rules: about 12 MiB of request, over the
/// 8 MiB palisaded reads as sent. palisadectl sends it gzip-compressed, so
/// it reaches validation and compilation; the datapath's capacities
/// (`policy_map_max`, then `rule_set_max`: each rule's set is its own) are
/// named when the defaults are too small, and once raised it is applied.
/// `diff` (read permission) keeps the plain limit and names it.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_policy_over_the_body_limit_reaches_palisaded_compressed() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let (workdir, config, policies) = setup("large-apply", "");
    let mut daemon = start(&topology, &workdir, &config, &policies);
    let mut text = String::from(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"large\" }\n[spec]\nnodeSelector = {}\n",
    );
    for index in 0..100_000u32 {
        let [_, a, b, c] = (0x0a00_0000 | index).to_be_bytes();
        text.push_str(&format!(
            "[[spec.ingress]]\nfromCIDR = [\"10.{a}.{b}.{c}/32\"]\ntoPorts = [{{ ports = [{{ port = \"22\", protocol = \"TCP\" }}] }}]\n"
        ));
    }
    assert!(text.len() > 8 * 1024 * 1024, "{} bytes", text.len());
    let file = write_policy(&workdir, "large", &text);
    let (_, stderr) = failed(&daemon.ctl(&["apply", "-f", &file]).expect("ctl"));
    assert!(
        stderr.contains("more than datapath.policy_map_max = 65536")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    let (_, stderr) = failed(&daemon.ctl(&["diff", "-f", &file]).expect("ctl"));
    assert!(
        stderr.contains("the diff request is over 8 MiB once decompressed"),
        "{stderr}"
    );
    let restart_with = |daemon: &mut Daemon, edit: fn(&mut palisade_config::Config)| {
        daemon.edit_config(edit).expect("config");
        daemon.restart().expect("palisaded restarts");
    };
    restart_with(&mut daemon, |config| {
        config.datapath.policy_map_max = 131_072
    });
    let (_, stderr) = failed(&daemon.ctl(&["apply", "-f", &file]).expect("ctl"));
    assert!(
        stderr.contains("100002 distinct rule sets, more than datapath.rule_set_max = 4096"),
        "{stderr}"
    );
    restart_with(&mut daemon, |config| config.datapath.rule_set_max = 131_072);
    let before = daemon.status().expect("status").rules;
    ok(daemon.ctl(&["apply", "-f", &file]).expect("ctl"));
    assert_eq!(daemon.status().expect("status").rules, before + 100_000);
}
