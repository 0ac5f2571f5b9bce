//! End to end: what a careless or hostile local user can do does not crash,
//! mislead or corrupt palisaded: palisadectl in a closed pipe, a file that
//! is not a socket where the socket goes, overlapping directories, a start
//! that fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use palisade_e2e::{
    Netns, TempDir, Topology, binary, palisaded_until_it_stops, repo, require_root,
};

/// A config enforcing on `interfaces` with its own pin path (removed by
/// the caller's check) and state directory in `workdir`.
fn config(workdir: &Path, interfaces: &str, pins: &Path) -> PathBuf {
    let path = workdir.join("palisade.toml");
    std::fs::write(
        &path,
        format!(
            "[datapath]\ninterfaces = {interfaces}\npin_path = \"{}\"\n[policy]\nstate_directory = \"{}\"\ndirectory = \"{}\"\n",
            pins.display(),
            workdir.join("state").display(),
            repo().join("etc/policies.d").display()
        ),
    )
    .expect("config written");
    path
}

/// Starts palisaded in `netns` with a config enforcing on `interfaces`
/// (its pins under a path of its own) and `extra` arguments (a socket in
/// `workdir` unless they name one), expecting it to refuse: it stops with
/// an error and leaves nothing pinned. Returns its log.
fn refused_start(netns: &Netns, workdir: &Path, interfaces: &str, extra: &[&str]) -> String {
    let pins = pin_path(netns.name());
    let config = config(workdir, interfaces, &pins).display().to_string();
    let socket = workdir.join("palisade.sock").display().to_string();
    let mut args = vec!["--config", config.as_str()];
    if !extra.contains(&"--socket") {
        args.extend(["--socket", socket.as_str()]);
    }
    args.extend_from_slice(extra);
    let (ok, log) = palisaded_until_it_stops(netns, &args);
    assert!(!ok, "{log}");
    assert!(
        !pins.exists(),
        "the failed start left {} behind",
        pins.display()
    );
    log
}

fn pin_path(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/palisade-e2e-hostile-{}-{name}",
        std::process::id()
    ))
}

#[test]
fn palisadectl_in_a_closed_pipe_ends_quietly() {
    // No daemon needed: `policy validate` prints to stdout.
    let mut child = Command::new(binary("palisadectl").expect("palisadectl"))
        .args(["policy", "validate"])
        .arg(repo().join("etc/policies.d/host-ssh-from-bastion.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palisadectl runs");
    // The reader is gone before palisadectl writes (`| head -0`).
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(101), "it panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_file_at_the_socket_path_is_refused_not_deleted_and_the_failed_start_leaves_no_pins() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("hostile-socket").expect("workdir");
    let precious = workdir.path().join("notes.txt");
    std::fs::write(&precious, "an operator's file").expect("file written");
    let log = refused_start(
        &topology.node,
        workdir.path(),
        "[\"eth0\"]",
        &["--socket", &precious.display().to_string()],
    );
    assert!(log.contains("exists and is not a socket"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&precious).expect("the file is still there"),
        "an operator's file"
    );
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn an_unknown_interface_stops_the_start_and_leaves_no_pins() {
    require_root();
    let netns = Netns::new("hostile-if").expect("namespace");
    let workdir = TempDir::new("hostile-if").expect("workdir");
    let log = refused_start(&netns, workdir.path(), "[\"nope0\"]", &[]);
    assert!(log.contains("\"nope0\" does not exist"), "{log}");
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_policy_directory_inside_the_state_directory_is_refused() {
    require_root();
    let netns = Netns::new("hostile-dirs").expect("namespace");
    let workdir = TempDir::new("hostile-dirs").expect("workdir");
    let state = workdir.path().join("state");
    let log = refused_start(
        &netns,
        workdir.path(),
        "[]",
        &[
            "--policy-dir",
            &state.join("policies").display().to_string(),
        ],
    );
    assert!(log.contains("overlap"), "{log}");
}

/// A member of the read group (uid and gid 65534, `nobody:nogroup`).
const MEMBER: u32 = 65534;

/// Another account of the same hostile user, also in the read group.
const SECOND_ACCOUNT: u32 = 4243;

/// Opens up to `count` connections to `socket` as `uid` in the read group
/// (on a thread of its own: raw setresuid changes that thread alone) and
/// holds them, idle, until `release` is signalled; returns how many it
/// opened.
fn idle_connections_as(
    uid: u32,
    socket: PathBuf,
    count: usize,
    release: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        // SAFETY: raw syscalls that change this thread's credentials only.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, MEMBER, MEMBER, MEMBER),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        let held: Vec<_> = (0..count)
            .filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok())
            .collect();
        let opened = held.len();
        let _ = release.recv();
        drop(held);
        opened
    })
}

/// Opens up to `count` TCP connections to `address` from inside `netns`
/// and holds them, idle, until `release` is signalled; returns how many it
/// opened.
fn idle_tcp_connections(
    netns: &Netns,
    address: &'static str,
    count: usize,
    release: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<usize> {
    netns
        .spawn(move || {
            let held: Vec<_> = (0..count)
                .filter_map(|_| std::net::TcpStream::connect(address).ok())
                .collect();
            let _ = release.recv();
            held.len()
        })
        .expect("namespace entered")
}

/// Open descriptors of process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// 2,000 idle connections from a read-only member on the control socket,
/// and 2,000 on the metrics listener: root's status still answers at once,
/// palisaded's descriptors stay few, and the member's own requests are
/// limited, not the daemon.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn idle_connection_floods_on_both_listeners_do_not_starve_root() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("hostile-flood").expect("workdir");
    let daemon = palisade_e2e::Daemon::start_with_config_text(
        &topology.node,
        "[datapath]\ninterfaces = [\"eth0\"]\n[control]\ngroup = \"nogroup\"\n[metrics]\nlisten = \"127.0.0.1:19963\"\n",
        &repo().join("etc/policies.d"),
        workdir.path(),
    )
    .expect("palisaded starts");
    let (release, released) = std::sync::mpsc::channel();
    let member = idle_connections_as(MEMBER, daemon.socket().to_owned(), 2_000, released);
    // The metrics flood, from the node's namespace.
    let (release_metrics, metrics_released) = std::sync::mpsc::channel();
    let scrapers = idle_tcp_connections(&topology.node, "127.0.0.1:19963", 2_000, metrics_released);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = daemon.ctl(&["status"]).expect("palisadectl");
    let took = started.elapsed();
    assert!(status.status.success(), "{status:?}\n{}", daemon.log());
    assert!(took < Duration::from_secs(1), "root's status took {took:?}");
    let files = open_files(daemon.pid());
    assert!(files < 400, "palisaded holds {files} descriptors");
    release.send(()).expect("release");
    release_metrics.send(()).expect("release");
    let opened = member.join().expect("member thread");
    let scraped = scrapers.join().expect("scraper thread");
    assert!(
        opened > 0 && scraped > 0,
        "the floods connected: {opened} {scraped}"
    );
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock conntrack entries expire by.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// Fills the pinned TCP connection table under `pins` with `count` live
/// entries (as if that many connections were open).
fn fill_conntrack(pins: &Path, count: u32) {
    use aya::maps::{HashMap, Map, MapData};
    use palisade_common::{CtEntry, CtKey, NO_RULE, direction};
    let map = MapData::from_pin(pins.join(palisade_common::CT_TCP_MAP)).expect("the pinned table");
    let mut table: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(Map::LruHashMap(map)).expect("a hash map");
    let expires_ns = monotonic_ns() + 3_600_000_000_000;
    for i in 0..count {
        let mut source = [0u8; 16];
        source[10] = 0xff;
        source[11] = 0xff;
        source[12] = 198;
        source[13] = 18;
        source[14..].copy_from_slice(&u16::try_from(i >> 16).unwrap_or(0).to_be_bytes());
        let mut destination = source;
        destination[15] = 1;
        let key = CtKey {
            source,
            destination,
            source_port: u16::try_from(i & 0xffff).unwrap_or(0),
            destination_port: 443,
            protocol: 6,
            ..CtKey::default()
        };
        let entry = CtEntry {
            expires_ns,
            rule_id: NO_RULE,
            direction: direction::EGRESS,
            ..CtEntry::default()
        };
        table
            .insert(&key.canonical().0, &entry, 0)
            .expect("an entry");
    }
}

/// Kilobytes of resident memory of process `pid`.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Everything at once from a read-only member of the control group:
/// nested and huge YAML through `diff`, 2,000 idle connections on each
/// listener, and listings of a 500,000-entry connection table. Root's
/// status answers within a second throughout, palisaded stays under
/// 100 MB, and the denied source stays dropped.
#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn a_hostile_local_user_does_everything_at_once() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("hostile-all").expect("workdir");
    let _listener =
        palisade_e2e::Listener::start(&topology.node, Topology::node_port(22)).expect("listener");
    let daemon = palisade_e2e::Daemon::start_with_config_text(
        &topology.node,
        "[datapath]\ninterfaces = [\"eth0\"]\n[control]\ngroup = \"nogroup\"\n[metrics]\nlisten = \"127.0.0.1:19964\"\n",
        &repo().join("etc/policies.d"),
        workdir.path(),
    )
    .expect("palisaded starts");
    assert_eq!(
        topology.ssh_from(Topology::OUTSIDER),
        palisade_e2e::Connect::TimedOut
    );
    fill_conntrack(daemon.pin_path(), 500_000);

    let nested = workdir.path().join("nested.yaml");
    std::fs::write(&nested, format!("{}x\n", "- ".repeat(5000))).expect("file");
    let huge = workdir.path().join("huge.yaml");
    let key = "k".repeat(100_000);
    std::fs::write(
        &huge,
        format!("? {key}\n: [{}]\n", vec!["1"; 60_000].join(",")),
    )
    .expect("file");
    for file in [&nested, &huge] {
        let _ = std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    }

    let (release, released) = std::sync::mpsc::channel();
    let idle = idle_connections_as(SECOND_ACCOUNT, daemon.socket().to_owned(), 2_000, released);
    let (release_metrics, metrics_released) = std::sync::mpsc::channel();
    let scrapers = idle_tcp_connections(&topology.node, "127.0.0.1:19964", 2_000, metrics_released);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = std::sync::Arc::clone(&stop);
        let socket = daemon.socket().to_owned();
        let (nested, huge) = (nested.clone(), huge.clone());
        std::thread::spawn(move || {
            let ctl = |args: &[&str]| {
                Command::new("setpriv")
                    .args([
                        &format!("--reuid={MEMBER}"),
                        &format!("--regid={MEMBER}"),
                        "--clear-groups",
                    ])
                    .arg(binary("palisadectl").expect("palisadectl"))
                    .arg("--socket")
                    .arg(&socket)
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
                    .expect("palisadectl as the member")
            };
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let refused = ctl(&["diff", "-f", &nested.display().to_string()]);
                assert!(
                    String::from_utf8_lossy(&refused.stderr).contains("nested deeper"),
                    "{refused:?}"
                );
                ctl(&["diff", "-f", &huge.display().to_string()]);
                let listed = ctl(&["ct", "list", "-o", "json", "--limit", "50000"]);
                assert!(
                    listed.status.success(),
                    "{:?}",
                    String::from_utf8_lossy(&listed.stderr)
                );
                rounds += 1;
            }
            rounds
        })
    };

    let mut slowest = Duration::ZERO;
    let mut largest = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let started = Instant::now();
        let status = daemon.ctl(&["status"]).expect("palisadectl");
        assert!(status.status.success(), "{status:?}\n{}", daemon.log());
        slowest = slowest.max(started.elapsed());
        largest = largest.max(rss_kb(daemon.pid()));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = attacker.join().expect("the attacker's requests behaved");
    release.send(()).expect("release");
    release_metrics.send(()).expect("release");
    idle.join().expect("idle connections");
    scrapers.join().expect("metrics connections");
    assert!(rounds >= 1, "the attacker got nothing done");
    assert!(
        slowest < Duration::from_secs(1),
        "root's status took {slowest:?}"
    );
    assert!(largest < 100 * 1024, "palisaded grew to {largest} kB");
    assert_eq!(
        topology.ssh_from(Topology::OUTSIDER),
        palisade_e2e::Connect::TimedOut,
        "the denied source got in"
    );
    eprintln!("{rounds} attack rounds; root's slowest status {slowest:?}; peak RSS {largest} kB");
}
