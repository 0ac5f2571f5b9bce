//! End to end: what a careless or hostile local user can do does not crash,
//! mislead or corrupt palisaded: palisadectl in a closed pipe, a file that
//! is not a socket where the socket goes, overlapping directories, a start
//! that fails.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use palisade_e2e::{Netns, TempDir, Topology, binary, have_root, repo};

/// Runs palisaded with `args` inside `netns` (network namespace only, so
/// pins go to the host's bpffs), expecting it to stop by itself within
/// 20 s; returns whether it succeeded and what it logged.
fn palisaded_stops(netns: &Netns, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", netns.name()))
        .arg("--")
        .arg(binary("palisaded").expect("palisaded"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palisaded runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("palisaded kept running: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("stderr read");
    (status.success(), log)
}

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
fn a_file_at_the_socket_path_is_refused_not_deleted_and_the_failed_start_leaves_no_pins() {
    if !have_root(
        "a_file_at_the_socket_path_is_refused_not_deleted_and_the_failed_start_leaves_no_pins",
    ) {
        return;
    }
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("hostile-socket").expect("workdir");
    let pins = pin_path("socket");
    let config = config(workdir.path(), "[\"eth0\"]", &pins);
    let precious = workdir.path().join("notes.txt");
    std::fs::write(&precious, "an operator's file").expect("file written");
    let (ok, log) = palisaded_stops(
        &topology.node,
        &[
            "--config",
            &config.display().to_string(),
            "--socket",
            &precious.display().to_string(),
        ],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("exists and is not a socket"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&precious).expect("the file is still there"),
        "an operator's file"
    );
    assert!(
        !pins.exists(),
        "the failed start left {} behind",
        pins.display()
    );
}

#[test]
fn an_unknown_interface_stops_the_start_and_leaves_no_pins() {
    if !have_root("an_unknown_interface_stops_the_start_and_leaves_no_pins") {
        return;
    }
    let netns = Netns::new("hostile-if").expect("namespace");
    let workdir = TempDir::new("hostile-if").expect("workdir");
    let pins = pin_path("interface");
    let config = config(workdir.path(), "[\"nope0\"]", &pins);
    let (ok, log) = palisaded_stops(
        &netns,
        &[
            "--config",
            &config.display().to_string(),
            "--socket",
            &workdir.path().join("palisade.sock").display().to_string(),
        ],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("\"nope0\" does not exist"), "{log}");
    assert!(
        !pins.exists(),
        "the failed start left {} behind",
        pins.display()
    );
}

#[test]
fn a_policy_directory_inside_the_state_directory_is_refused() {
    if !have_root("a_policy_directory_inside_the_state_directory_is_refused") {
        return;
    }
    let netns = Netns::new("hostile-dirs").expect("namespace");
    let workdir = TempDir::new("hostile-dirs").expect("workdir");
    let pins = pin_path("dirs");
    let config = config(workdir.path(), "[]", &pins);
    let state = workdir.path().join("state");
    let (ok, log) = palisaded_stops(
        &netns,
        &[
            "--config",
            &config.display().to_string(),
            "--policy-dir",
            &state.join("policies").display().to_string(),
            "--socket",
            &workdir.path().join("palisade.sock").display().to_string(),
        ],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("overlap"), "{log}");
    assert!(!pins.exists());
}
