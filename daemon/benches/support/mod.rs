//! What the benchmarks share: root check, a datapath config of their own,
//! the median, iperf3 between two nodes' pods, and writing the JSON result
//! under `target/bench/`. Each benchmark uses a part of it.
#![allow(dead_code)]

use std::{path::PathBuf, process::Stdio, thread, time::Duration};

use anyhow::{Context as _, bail};
use palisade_daemon::config::Config;
use palisade_e2e::{ChildGuard, mesh::Node, run};

/// Fails unless running as root (the benchmarks load BPF programs).
pub fn require_root(benchmark: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the {benchmark} benchmark loads BPF programs: run it as root");
    }
    Ok(())
}

/// A config for an in-process datapath with its own pin directory (remove
/// it with `pinning::cleanup`), no failsafe services, room for 262,144
/// prefixes, and drops reported once a second.
pub fn bench_config(name: &str) -> Config {
    let mut config = Config::default();
    config.datapath.pin_path =
        format!("/sys/fs/bpf/palisade-bench-{}-{name}", std::process::id()).into();
    config.datapath.policy_map_max = 262_144;
    config.failsafe.inbound.clear();
    config.failsafe.outbound.clear();
    config.flows.events_per_second = 1;
    config
}

/// Removes a benchmark datapath's pins when dropped, also when the
/// benchmark fails half-way (declare it before the datapath, so the
/// datapath is dropped first).
pub struct PinsRemoved(pub PathBuf);

impl Drop for PinsRemoved {
    fn drop(&mut self) {
        if let Err(error) = palisade_daemon::datapath::cleanup(
            palisade_daemon::datapath::DatapathKind::Ebpf,
            &self.0,
        ) {
            eprintln!("removing the pins under {}: {error:#}", self.0.display());
        }
    }
}

/// The median of `samples` (the upper one of an even count).
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Writes `json` to `target/bench/FILE` (or `$PALISADE_BENCH_RESULTS/FILE`
/// when set: a benchmark run in the kernel matrix's guest writes to its
/// share) and says where.
pub fn write_result(file: &str, json: &serde_json::Value) -> anyhow::Result<()> {
    let directory = match std::env::var_os("PALISADE_BENCH_RESULTS") {
        Some(directory) => PathBuf::from(directory),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("bench"),
    };
    let path = directory.join(file);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(json)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Mbit/s from `from`'s pods to `to`'s, by one iperf3 TCP run of `seconds`.
fn iperf(from: &Node, to: &Node, seconds: u32) -> anyhow::Result<f64> {
    let server = to
        .netns
        .command("iperf3")
        .args(["-s", "-1", "-B", to.pod_address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the iperf3 server")?;
    let _server = ChildGuard::new(server);
    thread::sleep(Duration::from_millis(500));
    let report = run(from.netns.command("iperf3").args([
        "-c",
        to.pod_address,
        "-B",
        from.pod_address,
        "-t",
        &seconds.to_string(),
        "-J",
    ]))?;
    let report: serde_json::Value = serde_json::from_str(&report)?;
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no throughput in iperf3's report")?;
    Ok(bits / 1e6)
}

/// The median Mbit/s of `rounds` iperf3 runs of `seconds` from `from`'s
/// pods to `to`'s, once they reach each other.
pub fn throughput(from: &Node, to: &Node, rounds: usize, seconds: u32) -> anyhow::Result<f64> {
    from.wait_for_ping(to)?;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        samples.push(iperf(from, to, seconds)?);
    }
    Ok(median(samples))
}
