//! End to end: palisaded's sd_notify messages, read from a fake NOTIFY_SOCKET.

use std::{os::unix::net::UnixDatagram, time::Duration};

use palisade_e2e::{
    Daemon, Launch, TempDir, Topology, allow_from_policy, datagrams_until, repo, require_root,
};

/// Every datagram that arrives within `window`, as text.
fn collect(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    datagrams_until(socket, window, |_| false)
        .iter()
        .map(|datagram| String::from_utf8_lossy(datagram).into_owned())
        .collect()
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn ready_status_and_watchdog_reach_the_notify_socket() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("notify").expect("workdir");
    let notify_path = workdir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("fake NOTIFY_SOCKET");
    let notify_env = notify_path.display().to_string();
    let daemon = Daemon::start_with(
        &topology.node,
        &repo().join("etc/palisade.toml"),
        &repo().join("etc/policies.d"),
        workdir.path(),
        &Launch {
            env: &[("NOTIFY_SOCKET", &notify_env), ("WATCHDOG_USEC", "200000")],
            ..Launch::default()
        },
    )
    .expect("palisaded starts");

    let messages = collect(&notify, Duration::from_millis(700));
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {messages:?}\n{}", daemon.log()));
    assert!(
        messages[ready]
            .contains("STATUS=policy generation 1: 1 policies, 1 rules; enforcing on eth0"),
        "{messages:?}"
    );
    // Pings at half of WATCHDOG_USEC (100 ms) after READY.
    let pings = messages[ready..]
        .iter()
        .filter(|m| m.trim() == "WATCHDOG=1")
        .count();
    assert!(pings >= 3, "only {pings} WATCHDOG=1 in {messages:?}");

    // An apply updates STATUS=.
    let extra = workdir.path().join("extra.toml");
    std::fs::write(&extra, allow_from_policy("extra", "192.0.2.0/24")).expect("write");
    let output = daemon
        .ctl(&["apply", "-f", &extra.display().to_string()])
        .expect("apply");
    assert!(output.status.success(), "{output:?}");
    let messages = collect(&notify, Duration::from_millis(300));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("STATUS=policy generation 2: 2 policies, 2 rules")),
        "{messages:?}"
    );

    // SIGHUP reloads between RELOADING=1 and READY=1 (the applied policy is
    // saved, so it is still there).
    daemon.hang_up().expect("SIGHUP");
    let messages = collect(&notify, Duration::from_millis(500));
    let reloading = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 in {messages:?}"));
    let ready = messages
        .iter()
        .position(|m| {
            m.lines().any(|l| l == "READY=1")
                && m.contains("STATUS=policy generation 3: 2 policies, 2 rules")
        })
        .unwrap_or_else(|| panic!("no READY=1 after the reload in {messages:?}"));
    assert!(reloading < ready, "{messages:?}");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn no_ready_when_the_policies_do_not_load() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("notify").expect("workdir");
    let policies = workdir.path().join("policies.d");
    std::fs::create_dir(&policies).expect("dir");
    std::fs::write(policies.join("bad.toml"), "kind = \"Nope\"\n").expect("write");
    let notify_path = workdir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("fake NOTIFY_SOCKET");
    let notify_env = notify_path.display().to_string();
    let started = Daemon::start_with(
        &topology.node,
        &repo().join("etc/palisade.toml"),
        &policies,
        workdir.path(),
        &Launch {
            env: &[("NOTIFY_SOCKET", &notify_env)],
            ..Launch::default()
        },
    );
    let error = started.expect_err("palisaded must refuse to start");
    assert!(error.to_string().contains("bad.toml:1:8"), "{error:#}");
    let messages = collect(&notify, Duration::from_millis(200));
    assert!(
        !messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
}
