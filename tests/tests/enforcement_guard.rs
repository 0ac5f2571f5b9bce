//! End to end: the firewall is never silently off. An enforced interface
//! deleted and re-created is enforced again within a second (and reported
//! missing meanwhile); the pins removed under a running palisaded neither
//! stop enforcement nor stay removed, so a kill -9 afterwards still leaves
//! the node protected.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use palisade_api::InterfaceState;
use palisade_e2e::{
    Connect, Daemon, Launch, Listener, TempDir, Topology, UNIT_CAPABILITIES, http_get, repo,
    require_root,
};

const SSH: u16 = 22;

/// The example daemon with only the packaged unit's capabilities.
fn start_with_unit_capabilities(topology: &Topology, workdir: &TempDir) -> Daemon {
    Daemon::start_with(
        &topology.node,
        &repo().join("etc/palisade.toml"),
        &repo().join("etc/policies.d"),
        workdir.path(),
        &Launch {
            wrapper: UNIT_CAPABILITIES,
            ..Launch::default()
        },
    )
    .expect("palisaded starts")
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_deleted_and_recreated_interface_is_enforced_again_within_a_second() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("guard-link").expect("workdir");
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let daemon = Daemon::start_example(&topology, &workdir);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    let before = daemon.status().expect("status").interfaces[0].ifindex;

    topology
        .node
        .ip(&["link", "del", "eth0"])
        .expect("veth deleted");
    daemon.wait_until(
        Duration::from_secs(2),
        "status saying eth0 is missing",
        || daemon.status().expect("status").interfaces[0].state == InterfaceState::Missing,
    );
    let metrics_like = daemon.status().expect("status");
    assert_eq!(metrics_like.interfaces[0].name, "eth0");

    topology.join().expect("veth re-created");
    let recreated = Instant::now();
    daemon.wait_until(
        Duration::from_secs(1),
        "re-attaching to the new eth0",
        || {
            let interface = &daemon.status().expect("status").interfaces[0];
            interface.state == InterfaceState::Enforcing && interface.ifindex != before
        },
    );
    assert!(recreated.elapsed() < Duration::from_secs(1));
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
    let log = daemon.log();
    assert!(log.contains("enforced interface vanished"), "{log}");
    assert!(log.contains("interface is back"), "{log}");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn removed_pins_neither_stop_enforcement_nor_stay_removed() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("guard-pins").expect("workdir");
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    // With the unit's capabilities only: putting pins back must not need
    // CAP_SYS_ADMIN (opening BPF objects by id does).
    let mut daemon = start_with_unit_capabilities(&topology, &workdir);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);

    // What a second `palisaded --cleanup` or an operator's rm -rf does.
    std::fs::remove_dir_all(daemon.pin_path()).expect("pins removed");
    assert_eq!(
        topology.ssh_from(Topology::OUTSIDER),
        Connect::TimedOut,
        "removing the pins switched the firewall off"
    );
    let pins = daemon.pin_path().join("links");
    let link_pinned = |kind: &str| pins.join(format!("{kind}:eth0")).exists();
    // A TCX link's pin, or the program pin of a cls_bpf filter.
    let tc_pinned =
        |way: &str| link_pinned(&format!("tc-{way}")) || link_pinned(&format!("tcfilter-{way}"));
    daemon.wait_until(Duration::from_secs(3), "the pins put back", || {
        tc_pinned("ingress")
            && tc_pinned("egress")
            && (link_pinned("xdp-native") || link_pinned("xdp-generic"))
            && Path::new(daemon.pin_path()).join("CT_TCP").exists()
    });
    assert!(
        daemon.log().contains("pinned again"),
        "no warning in the journal:\n{}",
        daemon.log()
    );

    // The pins are real: kill -9 leaves the programs attached, and the
    // next start adopts them.
    daemon.kill();
    assert_eq!(
        topology.ssh_from(Topology::OUTSIDER),
        Connect::TimedOut,
        "after kill -9 the node was open"
    );
    daemon.restart().expect("restart");
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
}

/// A small TCP connection table filled by allowed connections: status and
/// the metrics show its fill beside its capacity, and the journal warns
/// near the fill where the kernel's LRU evicts.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_nearly_full_connection_table_is_shown_and_reported() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("guard-ct").expect("workdir");
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let daemon = Daemon::start_with_config_text(
        &topology.node,
        "[datapath]\ninterfaces = [\"eth0\"]\nct_tcp_max = 256\n[metrics]\nlisten = \"127.0.0.1:19962\"\n",
        &repo().join("etc/policies.d"),
        workdir.path(),
    )
    .expect("palisaded starts");
    // Each connection gets a second try: in an LRU table this small the
    // kernel can fail an insert now and then (both CPUs' free lists dry),
    // and with `ct_full = "drop"` that SYN is dropped, fail-closed; a busy
    // machine can also leave the listener's backlog full for a moment.
    for i in 0..300 {
        let opened = (0..2).any(|_| topology.ssh_from(Topology::BASTION) == Connect::Established);
        assert!(opened, "connection {i} did not open in two tries");
    }
    let tcp = |status: &palisade_api::Status| {
        status
            .conntrack
            .iter()
            .find(|fill| fill.table == "tcp")
            .cloned()
    };
    daemon.wait_until(Duration::from_secs(6), "a count near eviction", || {
        tcp(&daemon.status().expect("status"))
            .is_some_and(|fill| fill.entries * 10 >= fill.evicting_from * 9)
    });
    let fill = tcp(&daemon.status().expect("status")).expect("the tcp table");
    assert_eq!(fill.capacity, 256);
    let table = daemon.ctl(&["status"]).expect("palisadectl");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("Conntrack:      tcp"), "{text}");
    daemon.wait_until(Duration::from_secs(3), "the journal warning", || {
        daemon.log().contains("connection table tcp is")
    });
    let metrics = http_get(&topology.node, "127.0.0.1:19962", "/metrics").expect("metrics");
    assert!(
        metrics.contains("palisade_conntrack_capacity{table=\"tcp\"} 256"),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_conntrack_entries{table=\"tcp\"}"),
        "{metrics}"
    );
}

/// An interface taken out of `datapath.interfaces` is let go at the next
/// start: its pinned programs are detached, not left enforcing where the
/// operator asked for nothing (an operator who locked themselves out this
/// way must get in by removing the interface and restarting).
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn an_interface_taken_out_of_the_config_is_detached_at_the_next_start() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("guard-unconfigured").expect("workdir");
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let mut daemon = Daemon::start_example(&topology, &workdir);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    daemon.kill();
    daemon
        .edit_config(|config| config.datapath.interfaces.clear())
        .expect("config edited");
    daemon.restart().expect("restart");
    assert!(daemon.status().expect("status").interfaces.is_empty());
    let links: Vec<_> = std::fs::read_dir(daemon.pin_path().join("links"))
        .expect("links directory")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(links.is_empty(), "still pinned: {links:?}");
    // The kernel frees an unpinned link from a work queue: give it a moment.
    daemon.wait_until(
        Duration::from_secs(5),
        "the outsider let in once eth0 is let go",
        || topology.ssh_from(Topology::OUTSIDER) == Connect::Established,
    );
}

/// palisade's cls_bpf filters in `node`'s eth0 hook of `way` (`tc filter
/// show`, one line per filter with palisade's handle).
fn palisade_filters(topology: &Topology, way: &str) -> usize {
    let shown = palisade_e2e::run(
        topology
            .node
            .command("tc")
            .args(["filter", "show", "dev", "eth0", way]),
    )
    .unwrap_or_default();
    shown
        .lines()
        .filter(|line| line.contains("handle 0x50414c49") && line.contains("direct-action"))
        .count()
}

/// The two TC attach paths on one node: switched by a restart without an
/// open moment, a deleted cls_bpf filter or clsact qdisc put back by the
/// guard, the filters of the other path removed, and `--cleanup` from
/// another network namespace deleting the filters.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn cls_bpf_filters_switch_with_tcx_come_back_when_deleted_and_go_at_cleanup() {
    use palisade_config::TcAttachConfig;
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("guard-tc").expect("workdir");
    let _listener = Listener::start(&topology.node, Topology::node_port(SSH)).expect("listener");
    let mut daemon = start_with_unit_capabilities(&topology, &workdir);
    let tcx_pin = daemon.pin_path().join("links/tc-ingress:eth0");
    let tcx_pinned = || tcx_pin.exists();
    let switch = |daemon: &mut Daemon, attach: TcAttachConfig| {
        daemon
            .edit_config(|config| config.datapath.attach = attach)
            .expect("config");
        // kill -9 leaves the old path attached; the new start puts the
        // other in place before taking the old one off (Daemon::restart
        // checks that status shows the path asked for).
        daemon.kill_and_restart().expect("restart");
        assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
        assert_eq!(topology.ssh_from(Topology::BASTION), Connect::Established);
    };

    switch(&mut daemon, TcAttachConfig::Tcx);
    assert!(tcx_pinned());
    assert_eq!(palisade_filters(&topology, "ingress"), 0);

    switch(&mut daemon, TcAttachConfig::Tc);
    assert_eq!(palisade_filters(&topology, "ingress"), 1);
    assert_eq!(palisade_filters(&topology, "egress"), 1);
    assert!(!tcx_pinned(), "the TCX link stayed beside the filter");
    assert!(daemon.log().contains("adopted_links=1"), "{}", daemon.log());

    // Deleted under palisaded: back within the guard's second.
    for deletion in [
        &[
            "filter",
            "del",
            "dev",
            "eth0",
            "ingress",
            "pref",
            "1",
            "handle",
            "0x50414c49",
            "bpf",
        ][..],
        &["qdisc", "del", "dev", "eth0", "clsact"][..],
    ] {
        palisade_e2e::run(topology.node.command("tc").args(deletion)).expect("tc");
        daemon.wait_until(Duration::from_secs(3), "the filter put back", || {
            palisade_filters(&topology, "ingress") == 1
                && palisade_filters(&topology, "egress") == 1
        });
        assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    }
    assert!(daemon.log().contains("it is back"), "{}", daemon.log());

    switch(&mut daemon, TcAttachConfig::Tcx);
    assert_eq!(
        palisade_filters(&topology, "ingress"),
        0,
        "the filter stayed beside TCX"
    );
    switch(&mut daemon, TcAttachConfig::Tc);

    // Stopped, the filters still enforce; --cleanup run from the test's own
    // network namespace finds theirs and deletes them.
    daemon.stop();
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::TimedOut);
    let cleanup = daemon.cleanup().expect("cleanup");
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert_eq!(palisade_filters(&topology, "ingress"), 0);
    assert_eq!(palisade_filters(&topology, "egress"), 0);
    assert_eq!(topology.ssh_from(Topology::OUTSIDER), Connect::Established);
}
