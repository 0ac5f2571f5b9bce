//! The cost of flow events: denied connection attempts per second through the
//! TC ingress program with every drop reported, and with the per-CPU event
//! rate limit holding reports back, timed by the kernel (`BPF_PROG_TEST_RUN`
//! with `repeat`), while a consumer thread drains the ring buffer as the
//! daemon's reader would. Run with `cargo xtask bench`.
//!
//! A denied packet opens no conntrack entry, so every run is judged anew.
//!
//! Writes `target/bench/flow_events.json`.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

mod support;

use anyhow::{Context as _, bail};
use aya::{TestRun as _, TestRunOptions};
use palisade_common::protocol;
use palisade_daemon::{
    config::Config,
    datapath::{
        Datapath as _,
        ebpf::{EbpfDatapath, pinning},
    },
};
use palisade_e2e::frames::frame;
use palisade_policy::{Connection, Direction, NodeContext, compile, policy_from_toml};

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

/// `TC_ACT_SHOT`.
const TC_DROP: u32 = 2;

fn measure(events_per_second: u32) -> anyhow::Result<Measurement> {
    let policy = policy_from_toml("allow-web", ALLOW_WEB)?;
    let table = compile(&[policy], &NodeContext::default())?;
    let mut config = support::bench_config(&format!("events-{events_per_second}"));
    config.flows.events_per_second = events_per_second;
    let result = measure_with(&config, &table);
    pinning::cleanup(&config.datapath.pin_path)?;
    result
}

fn measure_with(
    config: &Config,
    table: &palisade_policy::CompiledTable,
) -> anyhow::Result<Measurement> {
    let (mut datapath, mut ring) = EbpfDatapath::load(config)?;
    datapath.install(table, 1)?;
    // Outside 10.0.0.0/8: denied by default.
    let packet = frame(
        &Connection {
            protocol: protocol::TCP,
            source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)),
            destination: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
            destination_port: 80,
        },
        40000,
    );
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
    let program = datapath.tc_program(Direction::Ingress)?;
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let result = program.test_run(TestRunOptions {
            data_in: Some(&packet),
            repeat: REPEAT,
            ..TestRunOptions::default()
        })?;
        if result.return_value != TC_DROP {
            bail!(
                "the benchmark packet was not dropped (TC action {})",
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
    let counters = datapath.counters()?;
    Ok(Measurement {
        ns_per_packet: support::median(samples),
        events_delivered: delivered.load(Ordering::Relaxed),
        events_lost: counters.events_lost(),
    })
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    support::require_root("flow-event")?;
    let on = measure(0).context("measuring with every drop reported")?;
    let off = measure(1).context("measuring with the event rate limit")?;
    let pps = |m: &Measurement| 1e9 / m.ns_per_packet;
    println!(
        "flow events: denied TCP SYN through the TC ingress program, BPF_PROG_TEST_RUN x{REPEAT}, median of {ROUNDS}"
    );
    println!(
        "{:<16} {:>12} {:>14} {:>16} {:>12}",
        "drop events", "ns/packet", "packets/s", "events delivered", "events lost"
    );
    for (name, m) in [("all", &on), ("rate-limited", &off)] {
        println!(
            "{name:<16} {:>12.1} {:>14.0} {:>16} {:>12}",
            m.ns_per_packet,
            pps(m),
            m.events_delivered,
            m.events_lost
        );
    }
    println!(
        "event cost: {:.1} ns per reported packet",
        on.ns_per_packet - off.ns_per_packet
    );
    let json = serde_json::json!({
        "repeat": REPEAT,
        "rounds": ROUNDS,
        "events_on": {
            "ns_per_packet": on.ns_per_packet,
            "packets_per_second": pps(&on),
            "events_delivered": on.events_delivered,
            "events_lost": on.events_lost,
        },
        "events_rate_limited": {
            "ns_per_packet": off.ns_per_packet,
            "packets_per_second": pps(&off),
            "events_delivered": off.events_delivered,
            "events_lost": off.events_lost,
        },
    });
    support::write_result("flow_events.json", &json)
}
