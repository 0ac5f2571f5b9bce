//! The cost of flow events: forwarded packets per second through the XDP
//! program with forward events on and off, timed by the kernel
//! (`BPF_PROG_TEST_RUN` with `repeat`), while a consumer thread drains the
//! ring buffer as the daemon's reader would. Run with `cargo xtask bench`.
//!
//! Writes `target/bench/flow_events.json`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{TestRun as _, TestRunOptions};
use palisade_common::protocol;
use palisade_daemon::datapath::{Datapath as _, ebpf::EbpfDatapath, test_packet::frame};
use palisade_policy::{Connection, NodeContext, compile, policy_from_toml};

/// Runs per measurement; the kernel reports the mean time of one run.
const REPEAT: u32 = 1_000_000;
/// Measurements per setting; the median is reported.
const ROUNDS: usize = 5;

const ALLOW_WEB: &str = r#"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "allow-web" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["10.0.0.0/8"]
toPorts = [{ ports = [{ port = 80, protocol = "TCP" }] }]
"#;

struct Measurement {
    ns_per_packet: f64,
    events_delivered: u64,
    events_lost: u64,
}

fn measure(forward_events: bool) -> anyhow::Result<Measurement> {
    let policy = policy_from_toml("allow-web", ALLOW_WEB)?;
    let table = compile(&[policy], &NodeContext::default())?;
    let (mut datapath, mut ring) = EbpfDatapath::load(forward_events)?;
    datapath.install(&table, 1)?;
    let packet = frame(&Connection {
        protocol: protocol::TCP,
        source: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        destination: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
        destination_port: 80,
    });
    // Drain the ring on the other core, as palisaded's reader task does.
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (stop, delivered) = (Arc::clone(&stop), Arc::clone(&delivered));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut drained = 0;
                while ring.next().is_some() {
                    drained += 1;
                }
                delivered.fetch_add(drained, Ordering::Relaxed);
                if drained == 0 {
                    thread::sleep(Duration::from_micros(50));
                }
            }
        })
    };
    let program = datapath.xdp_program()?;
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let result = program.test_run(TestRunOptions {
            data_in: Some(&packet),
            repeat: REPEAT,
            ..TestRunOptions::default()
        })?;
        if result.return_value != 2 {
            bail!(
                "the benchmark packet was not passed (XDP action {})",
                result.return_value
            );
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "nanoseconds of one run fit an f64"
        )]
        samples.push(result.duration.as_nanos() as f64);
    }
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    consumer
        .join()
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))?;
    samples.sort_by(f64::total_cmp);
    let counters = datapath.counters()?;
    Ok(Measurement {
        ns_per_packet: samples[ROUNDS / 2],
        events_delivered: delivered.load(Ordering::Relaxed),
        events_lost: counters.events_lost,
    })
}

fn output_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench/flow_events.json")
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    if !is_root() {
        bail!("the flow-event benchmark loads BPF programs: run it as root");
    }
    let on = measure(true).context("measuring with forward events on")?;
    let off = measure(false).context("measuring with forward events off")?;
    let pps = |m: &Measurement| 1e9 / m.ns_per_packet;
    println!(
        "flow events: forwarded TCP SYN through the XDP program, BPF_PROG_TEST_RUN x{REPEAT}, median of {ROUNDS}"
    );
    println!(
        "{:<16} {:>12} {:>14} {:>16} {:>12}",
        "forward events", "ns/packet", "packets/s", "events delivered", "events lost"
    );
    for (name, m) in [("on", &on), ("off", &off)] {
        println!(
            "{name:<16} {:>12.1} {:>14.0} {:>16} {:>12}",
            m.ns_per_packet,
            pps(m),
            m.events_delivered,
            m.events_lost
        );
    }
    println!(
        "event cost: {:.1} ns per forwarded packet",
        on.ns_per_packet - off.ns_per_packet
    );
    let json = serde_json::json!({
        "repeat": REPEAT,
        "rounds": ROUNDS,
        "forward_events_on": {
            "ns_per_packet": on.ns_per_packet,
            "packets_per_second": pps(&on),
            "events_delivered": on.events_delivered,
            "events_lost": on.events_lost,
        },
        "forward_events_off": {
            "ns_per_packet": off.ns_per_packet,
            "packets_per_second": pps(&off),
            "events_delivered": off.events_delivered,
            "events_lost": off.events_lost,
        },
    });
    let path = output_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
