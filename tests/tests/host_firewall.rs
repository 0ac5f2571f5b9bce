//! End to end: the example host policy enforced by palisaded on a veth pair
//! between two namespaces, driven and observed through palisadectl.

use std::path::Path;

use palisade_api::{Flow, TrafficDirection, Verdict};
use palisade_e2e::{
    Connect, Daemon, Listener, TempDir, Topology, address, netns_exists, process_exists,
    require_root,
};

const SSH: u16 = 22;

fn is_ssh_from(flow: &Flow, source: &str, verdict: Verdict) -> bool {
    flow.ip.source == address(source)
        && flow.ip.destination == address(Topology::NODE)
        && flow.verdict == verdict
        && matches!(
            flow.l4,
            Some(palisade_api::Layer4::Tcp {
                destination_port: SSH,
                ..
            })
        )
}

/// Whether any interface of the root namespace carries an XDP program.
fn root_namespace_has_xdp() -> bool {
    let links = palisade_e2e::run(std::process::Command::new("ip").args(["-d", "link", "show"]))
        .expect("ip link");
    links.contains("prog/xdp")
}

/// palisade's TC programs attached (TCX) to any interface of the root
/// namespace, which this test process runs in.
fn root_namespace_palisade_tc_programs() -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net").expect("/sys/class/net") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let Ok(c_name) = std::ffi::CString::new(name.clone()) else {
            continue;
        };
        for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, programs)) = SchedClassifier::query_tcx(c_name.as_c_str(), attach_type) {
                found.extend(
                    programs
                        .iter()
                        .filter_map(|p| p.name_as_str().map(str::to_owned))
                        .filter(|p| p.starts_with("palisade"))
                        .map(|p| format!("{name}: {p}")),
                );
            }
        }
    }
    found
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn denied_source_is_dropped_allowed_source_reaches_listener() {
    require_root();
    let xdp_in_root_before = root_namespace_has_xdp();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("e2e").expect("workdir");
    let listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let daemon = Daemon::start_example(&topology, &workdir);

    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    assert_eq!(listener.peers(), [address(Topology::BASTION)]);

    let flows = daemon
        .flows_until(|flows| {
            flows
                .iter()
                .any(|f| is_ssh_from(f, Topology::OUTSIDER, Verdict::Dropped))
                && flows
                    .iter()
                    .any(|f| is_ssh_from(f, Topology::BASTION, Verdict::Forwarded))
        })
        .expect("observe");
    let dropped = flows
        .iter()
        .find(|f| is_ssh_from(f, Topology::OUTSIDER, Verdict::Dropped))
        .unwrap_or_else(|| {
            panic!(
                "no DROPPED flow from the outsider in {flows:#?}\n{}",
                daemon.log()
            )
        });
    assert_eq!(dropped.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
    assert_eq!(dropped.traffic_direction, TrafficDirection::Ingress);
    assert_eq!(dropped.interface.name, "eth0");
    let forwarded = flows
        .iter()
        .find(|f| is_ssh_from(f, Topology::BASTION, Verdict::Forwarded))
        .expect("a FORWARDED flow from the bastion");
    assert_eq!(
        forwarded.ingress_allowed_by[0].name,
        "host-ssh-from-bastion"
    );
    assert_eq!(forwarded.ingress_allowed_by[0].rule, "spec.ingress[0]");

    let status = daemon.status().expect("status");
    assert!(status.ingress_default_deny);
    assert!(status.counters.dropped() >= 1);
    assert_eq!(status.interfaces[0].name, "eth0");

    assert_eq!(
        root_namespace_has_xdp(),
        xdp_in_root_before,
        "nothing may attach to the root namespace"
    );
    assert_eq!(
        root_namespace_palisade_tc_programs(),
        Vec::<String>::new(),
        "no palisade TC program may attach in the root namespace"
    );
}

/// Runs `palisadectl apply -f FILE` and returns (exit code, stderr).
fn apply(daemon: &Daemon, file: &Path) -> (Option<i32>, String) {
    let output = daemon
        .ctl(&["apply", "-f", &file.display().to_string()])
        .expect("palisadectl runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const ALLOW_OUTSIDER: &str = r#"
apiVersion = "cilium.io/v2"
kind = "CiliumClusterwideNetworkPolicy"

[metadata]
name = "allow-outsider"

[spec]
nodeSelector = {}

[[spec.ingress]]
fromCIDR = ["10.200.0.96/27"]
toPorts = [{ ports = [{ port = "22", protocol = "TCP" }] }]
"#;

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn invalid_policy_is_rejected_with_its_position_and_changes_nothing() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("e2e").expect("workdir");
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let daemon = Daemon::start_example(&topology, &workdir);
    let write = |name: &str, text: &str| {
        let path = workdir.path().join(name);
        std::fs::write(&path, text).expect("write policy");
        path
    };

    let unknown_field = write(
        "unknown-field.toml",
        &ALLOW_OUTSIDER.replace("fromCIDR", "fromCidr"),
    );
    let (code, stderr) = apply(&daemon, &unknown_field);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:12:1: spec.ingress[0].fromCidr: unknown field `fromCidr`",
            unknown_field.display()
        )),
        "{stderr}"
    );

    let bad_cidr = write(
        "bad-cidr.toml",
        &ALLOW_OUTSIDER.replace("10.200.0.96/27", "10.200.0.960/27"),
    );
    let (code, stderr) = apply(&daemon, &bad_cidr);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:12:13: spec.ingress[0].fromCIDR[0]: invalid CIDR \"10.200.0.960/27\"",
            bad_cidr.display()
        )),
        "{stderr}"
    );

    // The rules in force still hold: the outsider is still dropped, the bastion still gets in.
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);

    // A dry run of the valid policy changes nothing either...
    let good = write("allow-outsider.toml", ALLOW_OUTSIDER);
    let output = daemon
        .ctl(&["apply", "--dry-run", "-f", &good.display().to_string()])
        .expect("palisadectl runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    // ...and applying it does let the outsider in, so the checks above can fail.
    let (code, stderr) = apply(&daemon, &good);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn guards_remove_namespaces_and_processes_when_a_test_fails() {
    require_root();
    let (sender, receiver) = std::sync::mpsc::channel();
    let failed = std::panic::catch_unwind(move || {
        let topology = Topology::new().expect("namespaces");
        let workdir = TempDir::new("e2e").expect("workdir");
        let daemon = Daemon::start_example(&topology, &workdir);
        sender
            .send((
                topology.node.name().to_owned(),
                topology.client.name().to_owned(),
                daemon.pid(),
                workdir.path().to_owned(),
            ))
            .expect("send");
        panic!("a failing test");
    });
    assert!(failed.is_err());
    let (node, client, pid, workdir) = receiver.recv().expect("the test reached its failure");
    assert!(!netns_exists(&node), "namespace {node} left behind");
    assert!(!netns_exists(&client), "namespace {client} left behind");
    assert!(!process_exists(pid), "palisaded (pid {pid}) left running");
    assert!(!workdir.exists(), "{} left behind", workdir.display());
}
