//! The WireGuard benchmark (`cargo xtask bench wireguard`): iperf3 TCP
//! throughput between the pod addresses of two nodes in namespaces, through
//! palisaded's tunnel (here the in-process userspace one: this kernel has no
//! WireGuard module) and through a pair of stock wireguard-go, in one run,
//! median of three 5-second runs each.
//!
//! Writes `target/bench/wireguard.json`.

mod support;

use anyhow::{Context as _, bail};
use palisade_e2e::{
    TempDir,
    mesh::{Node, PalisadePair, WireGuardGo, interface, key_pair, nodes},
    on_path,
};

/// Runs per tunnel; the median is reported.
const ROUNDS: usize = 3;
/// Seconds per iperf3 run.
const SECONDS: u32 = 5;

/// The median throughput of `ROUNDS` runs of `SECONDS`.
fn throughput(from: &Node, to: &Node) -> anyhow::Result<f64> {
    support::throughput(from, to, ROUNDS, SECONDS)
}

fn palisade() -> anyhow::Result<f64> {
    let work = TempDir::new("wgbench")?;
    let pair = PalisadePair::start(work.path(), false)?;
    throughput(&pair.a, &pair.b)
}

fn wireguard_go() -> anyhow::Result<f64> {
    let (a, b) = nodes()?;
    let work = TempDir::new("wggobench")?;
    let (a_private, a_public) = key_pair()?;
    let (b_private, b_public) = key_pair()?;
    let _a = WireGuardGo::start(&a, &interface("a"), &a_private, &b, &b_public, work.path())?;
    let _b = WireGuardGo::start(&b, &interface("b"), &b_private, &a, &a_public, work.path())?;
    throughput(&a, &b)
}

fn main() -> anyhow::Result<()> {
    support::require_root("wireguard")?;
    for tool in ["iperf3", "wg", "wireguard-go", "ping"] {
        if !on_path(tool) {
            bail!("{tool} is missing: `cargo xtask setup` installs it");
        }
    }
    println!(
        "wireguard: iperf3 TCP, {SECONDS} s x {ROUNDS}, median, pod to pod through the tunnel"
    );
    let palisade = palisade().context("measuring palisade")?;
    println!("palisade (userspace)  {palisade:>8.0} Mbit/s");
    let go = wireguard_go().context("measuring wireguard-go")?;
    println!("wireguard-go          {go:>8.0} Mbit/s");
    println!("palisade / wireguard-go: {:.2}", palisade / go);
    support::write_result(
        "wireguard.json",
        &serde_json::json!({ "palisade_mbps": palisade, "wireguard_go_mbps": go }),
    )
}
