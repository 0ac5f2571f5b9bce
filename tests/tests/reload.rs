//! End to end: reload puts the whole configuration in force with the
//! policies (SIGHUP and `palisadectl reload` alike), refuses by name what
//! needs a restart, and a mistyped `--config` stops palisaded at once.

use std::time::Duration;

use palisade_api::Verdict;
use palisade_config::ConfigFile;
use palisade_e2e::{
    Connect, Daemon, Listener, Netns, TempDir, Topology, address, palisaded_until_it_stops, repo,
    require_root,
};

const SSH: u16 = 22;

/// Waits until `status` says the generation moved past `before`.
fn wait_for_generation(daemon: &Daemon, before: u32) {
    daemon.wait_until(Duration::from_secs(5), "a new generation", || {
        daemon.status().expect("status").generation > before
    });
}

/// The README's steps to go from the package's audit mode to enforcing:
/// interfaces named, `audit_mode = true` (nothing dropped, AUDIT flows),
/// then `audit_mode = false` and `systemctl reload palisade` (SIGHUP).
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn the_readme_steps_go_from_audit_to_enforcing_by_reload() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("reload-audit").expect("workdir");
    let mut example = ConfigFile::new(Some(repo().join("etc/palisade.toml")))
        .load()
        .expect("the example config");
    example.policy.audit_mode = true;
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let daemon = Daemon::start_with_config_text(
        &topology.node,
        &toml::to_string(&example).expect("toml"),
        &repo().join("etc/policies.d"),
        workdir.path(),
    )
    .expect("palisaded starts");

    assert!(daemon.status().expect("status").audit_mode);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);
    let audited = daemon
        .flows_until(|flows| flows.iter().any(|f| f.verdict == Verdict::Audit))
        .expect("observe");
    assert!(
        audited
            .iter()
            .any(|f| f.verdict == Verdict::Audit && f.ip.source == address(Topology::OUTSIDER)),
        "no AUDIT flow for the outsider: {audited:#?}"
    );

    let before = daemon.status().expect("status").generation;
    daemon
        .edit_config(|config| config.policy.audit_mode = false)
        .expect("config edited");
    daemon.hang_up().expect("SIGHUP");
    wait_for_generation(&daemon, before);
    let status = daemon.status().expect("status");
    assert!(!status.audit_mode, "status still says audit mode");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
}

/// Node labels, failsafe services and the prefilter list change by
/// `palisadectl reload`; a setting that needs a restart is refused by name
/// and nothing changes.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn reload_puts_labels_failsafe_and_prefilter_in_force_and_names_restart_settings() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("reload-keys").expect("workdir");
    let policies = workdir.path().join("policies.d");
    std::fs::create_dir(&policies).expect("policy dir");
    std::fs::write(
        policies.join("edge.yaml"),
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: edge-ssh-from-bastion
spec:
  nodeSelector:
    matchLabels:
      role: edge
  ingress:
    - fromCIDR: ["10.200.0.8/29"]
      toPorts: [{ ports: [{ port: "22", protocol: TCP }] }]
"#,
    )
    .expect("policy written");
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let daemon = Daemon::start_with_config_text(
        &topology.node,
        "[node]\nlabels = { role = \"edge\" }\n[datapath]\ninterfaces = [\"eth0\"]\n",
        &policies,
        workdir.path(),
    )
    .expect("palisaded starts");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);

    // The failsafe list: SSH from anywhere, whatever the policy says.
    daemon
        .edit_config(|config| {
            config.failsafe.inbound = vec!["tcp:22".parse().expect("a service")];
        })
        .expect("config edited");
    let reloaded = daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(reloaded.status.success(), "{reloaded:?}\n{}", daemon.log());
    assert_eq!(
        daemon.status().expect("status").failsafe.inbound,
        ["tcp:22"]
    );
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);

    // Back without it, and the node relabelled out of the policy's nodeSelector.
    daemon
        .edit_config(|config| {
            config.failsafe.inbound.clear();
            config.node.labels = [("role".to_owned(), "core".to_owned())].into();
        })
        .expect("config edited");
    let reloaded = daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(reloaded.status.success(), "{reloaded:?}\n{}", daemon.log());
    let status = daemon.status().expect("status");
    assert!(status.policies.is_empty(), "{:?}", status.policies);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);

    // The prefilter list drops the outsider again, without a policy.
    daemon
        .edit_config(|config| {
            config.datapath.prefilter = vec!["10.200.0.100/32".parse().expect("a prefix")];
        })
        .expect("config edited");
    let reloaded = daemon.ctl(&["reload"]).expect("palisadectl");
    assert!(reloaded.status.success(), "{reloaded:?}\n{}", daemon.log());
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);

    // A setting that needs a restart: refused by name, nothing changed
    // (the prefilter removal in the same edit is not put in force).
    let generation = daemon.status().expect("status").generation;
    daemon
        .edit_config(|config| {
            config.datapath.ct_tcp_max = 1024;
            config.datapath.prefilter.clear();
        })
        .expect("config edited");
    let refused = daemon.ctl(&["reload"]).expect("palisadectl");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        stderr.contains("datapath.ct_tcp_max") && stderr.contains("restart"),
        "{stderr}"
    );
    assert_eq!(daemon.status().expect("status").generation, generation);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
}

/// `palisaded --config` naming a file that does not exist stops at once
/// with the file's name, instead of running on the built-in defaults.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_mistyped_config_path_stops_palisaded_with_its_name() {
    require_root();
    // In a namespace of its own: were the file ignored, palisaded would run
    // there on the defaults (its bpffs private to it), not on this host.
    let netns = Netns::new("mistyped").expect("namespace");
    let workdir = TempDir::new("mistyped").expect("workdir");
    let missing = workdir.path().join("palsade.toml");
    let (ok, log) = palisaded_until_it_stops(
        &netns,
        &[
            "--config",
            &missing.display().to_string(),
            "--socket",
            &workdir.path().join("palisade.sock").display().to_string(),
        ],
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains(&format!(
            "{}: no such configuration file",
            missing.display()
        )),
        "{log}"
    );
}
