//! `cargo xtask demo`: the firewall on its example config, in namespaces.
//!
//! A "node" namespace runs palisaded with `etc/palisade.toml` and
//! `etc/policies.d/`; a "client" namespace, joined to it by a veth pair, tries
//! SSH from inside the bastion network (allowed) and from outside it (dropped).
//! Then it prints what `palisadectl observe` and `palisadectl status` show.
//! Everything is removed at the end, also on failure or Ctrl-C.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_e2e::{Connect, Daemon, Listener, TempDir, Topology, tcp_connect};

use crate::workspace;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails (so the guards clean up) once Ctrl-C was pressed.
fn checkpoint() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads BPF: run it as root");
    }
    let root = workspace();
    let config = root.join("etc/palisade.toml");
    let policies = root.join("etc/policies.d");

    step(
        "creating namespaces: node (10.200.0.1) <-veth-> client (10.200.0.10 bastion, 10.200.0.100 outsider)",
    );
    let topology = Topology::new()?;
    let workdir = TempDir::new("demo")?;
    let ssh = SocketAddr::new(Topology::NODE.parse()?, 22);
    let listener = Listener::start(&topology.node, ssh)?;
    checkpoint()?;

    step(&format!(
        "starting palisaded in the node namespace with {} and {} \
         (with [failsafe] emptied: the shipped config keeps SSH open to everyone, \
         so that a wrong policy cannot lock you out)",
        config.display(),
        policies.display()
    ));
    let daemon = Daemon::start(&topology.node, &config, &policies, workdir.path())?;
    ctl(&daemon, &["status"])?;
    checkpoint()?;

    let mut outcomes = Vec::new();
    for (who, source) in [
        ("bastion", Topology::BASTION),
        ("outsider", Topology::OUTSIDER),
    ] {
        let outcome = tcp_connect(
            &topology.client,
            source.parse()?,
            ssh,
            Duration::from_secs(1),
        )?;
        step(&format!(
            "ssh from the {who} {source} to {ssh}: {outcome:?}"
        ));
        outcomes.push(outcome);
        checkpoint()?;
    }
    if outcomes != [Connect::Established, Connect::TimedOut] {
        bail!("expected the bastion to connect and the outsider to be dropped, got {outcomes:?}");
    }
    step(&format!(
        "the SSH listener accepted: {:?}",
        listener.peers()
    ));

    step("palisadectl observe");
    let deadline = Instant::now() + Duration::from_secs(5);
    let flows = loop {
        let flows = ctl_output(&daemon, &["observe"])?;
        let complete = flows.contains("DROPPED") && flows.contains("FORWARDED");
        if complete || Instant::now() > deadline {
            break flows;
        }
        std::thread::sleep(Duration::from_millis(100));
        checkpoint()?;
    };
    print!("{flows}");
    step("palisadectl observe --verdict DROPPED -o json");
    print!(
        "{}",
        ctl_output(&daemon, &["observe", "--verdict", "DROPPED", "-o", "json"])?
    );
    step("palisadectl status");
    ctl(&daemon, &["status"])?;
    if !(flows.contains("DROPPED") && flows.contains("FORWARDED")) {
        bail!(
            "expected both DROPPED and FORWARDED flows; palisaded's log:\n{}",
            daemon.log()
        );
    }
    step("done; removing the namespaces");
    drop(daemon);
    drop(listener);
    drop(topology);
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn ctl_output(daemon: &Daemon, args: &[&str]) -> anyhow::Result<String> {
    let output = daemon.ctl(args)?;
    if !output.status.success() {
        bail!(
            "palisadectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).context("palisadectl printed non-UTF-8")
}

fn ctl(daemon: &Daemon, args: &[&str]) -> anyhow::Result<()> {
    print!("{}", ctl_output(daemon, args)?);
    Ok(())
}
