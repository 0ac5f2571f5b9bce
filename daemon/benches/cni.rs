//! The CNI benchmark (`cargo xtask bench cni`): how long a pod's network
//! takes to set up and tear down — palisade-cni's ADD then DEL (a veth
//! pair, host-local addressing, the endpoint registered with a running
//! palisaded and forgotten) against the stock ptp plugin's on the same
//! host-local, in the same run, interleaved. Each plugin runs as a runtime
//! runs it: a fresh process in the node's namespace with the configuration
//! on stdin. p50 and p99 of 200 pods each.
//!
//! Writes `target/bench/cni.json`.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod support;

use anyhow::{Context as _, bail};
use palisade_e2e::{
    Daemon, Netns, TempDir, Topology,
    cni::{find_plugin, netns_path},
};
use serde_json::json;

/// Pods per plugin.
const PODS: usize = 200;

/// ADD and DEL times of one plugin.
#[derive(Default)]
struct Samples {
    add: Vec<f64>,
    del: Vec<f64>,
    both: Vec<f64>,
}

/// The `q` quantile of `samples` (nearest rank), in ms.
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `plugin` for `command` with `config` on stdin, from a thread in the
/// node's namespace (so no `ip netns exec` is timed); its duration.
fn time_plugin(
    node: &Netns,
    plugin: &str,
    command: &str,
    container: &str,
    netns: &str,
    config: &serde_json::Value,
) -> anyhow::Result<Duration> {
    let (program, path) = find_plugin(plugin)?;
    let config = serde_json::to_vec(config)?;
    let (command, container, netns) = (command.to_owned(), container.to_owned(), netns.to_owned());
    node.spawn(move || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut child = Command::new(&program)
            .env_clear()
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &container)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(&config)?;
        let output = child.wait_with_output()?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!(
                "{} {command} failed: {}{}",
                program.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(elapsed)
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("the plugin thread panicked"))?
}

fn main() -> anyhow::Result<()> {
    support::require_root("cni")?;
    let topology = Topology::new()?;
    let workdir = TempDir::new("bench-cni")?;
    let policies = workdir.path().join("policies.d");
    std::fs::create_dir(&policies)?;
    let daemon = Daemon::start_with_config_text(
        &topology.node,
        "[datapath]\ninterfaces = [\"eth0\"]\n",
        &policies,
        workdir.path(),
    )?;
    let ipam = |subnet: &str, directory: &str| {
        json!({
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": workdir.path().join(directory),
        })
    };
    let plugins = [
        (
            "palisade-cni",
            json!({"cniVersion": "1.0.0", "name": "pods", "type": "palisade-cni",
                   "socket": daemon.socket(), "ipam": ipam("10.80.0.0/16", "ipam-palisade")}),
        ),
        (
            "ptp",
            json!({"cniVersion": "1.0.0", "name": "pods", "type": "ptp",
                   "ipam": ipam("10.81.0.0/16", "ipam-ptp")}),
        ),
    ];
    let mut samples = [Samples::default(), Samples::default()];
    for pod in 0..PODS {
        for ((plugin, config), samples) in plugins.iter().zip(samples.iter_mut()) {
            let netns = Netns::new("bench-pod")?;
            let path = netns_path(&netns).display().to_string();
            let container = format!("bench{pod}");
            let add = time_plugin(&topology.node, plugin, "ADD", &container, &path, config)?;
            let del = time_plugin(&topology.node, plugin, "DEL", &container, &path, config)?;
            let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
            samples.add.push(ms(add));
            samples.del.push(ms(del));
            samples.both.push(ms(add + del));
        }
    }
    println!("cni: ADD then DEL of one pod, {PODS} pods per plugin, interleaved (ms)");
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "ADD+DEL p50", "ADD+DEL p99"
    );
    let mut rows = Vec::new();
    for ((plugin, _), samples) in plugins.iter().zip(&samples) {
        let row = json!({
            "plugin": plugin,
            "add_p50_ms": quantile(&samples.add, 0.5),
            "add_p99_ms": quantile(&samples.add, 0.99),
            "del_p50_ms": quantile(&samples.del, 0.5),
            "del_p99_ms": quantile(&samples.del, 0.99),
            "add_del_p50_ms": quantile(&samples.both, 0.5),
            "add_del_p99_ms": quantile(&samples.both, 0.99),
        });
        println!(
            "{:<14} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>12.1} {:>12.1}",
            plugin,
            row["add_p50_ms"].as_f64().unwrap_or_default(),
            row["add_p99_ms"].as_f64().unwrap_or_default(),
            row["del_p50_ms"].as_f64().unwrap_or_default(),
            row["del_p99_ms"].as_f64().unwrap_or_default(),
            row["add_del_p50_ms"].as_f64().unwrap_or_default(),
            row["add_del_p99_ms"].as_f64().unwrap_or_default(),
        );
        rows.push(row);
    }
    let ratio_p50 = quantile(&samples[0].both, 0.5) / quantile(&samples[1].both, 0.5);
    let ratio_p99 = quantile(&samples[0].both, 0.99) / quantile(&samples[1].both, 0.99);
    println!(
        "palisade-cni / ptp, ADD+DEL: {ratio_p50:.2}x at p50, {ratio_p99:.2}x at p99 (goal: within 1.5x)"
    );
    drop(daemon);
    support::write_result(
        "cni.json",
        &json!({"pods": PODS, "plugins": rows, "ratio_p50": ratio_p50, "ratio_p99": ratio_p99}),
    )
}
