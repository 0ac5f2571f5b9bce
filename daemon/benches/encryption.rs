//! The encryption benchmark (`cargo xtask bench encryption`): iperf3 TCP
//! throughput from one node's pods to the other's, two nodes in namespaces,
//! in one run: routed in the clear (the reference), through palisade's
//! IPsec (tunnel mode, AES-GCM-128 and ChaCha20-Poly1305) and through
//! palisade's kernel WireGuard. This host's kernel has neither ESP nor
//! WireGuard: `cargo xtask bench encryption` runs it in the kernel matrix's
//! Debian 6.1 guest under TCG, where only the ratios mean anything.
//!
//! Writes `encryption.json` under `$PALISADE_BENCH_RESULTS` when set (the
//! guest's share), else under `target/bench/`.

mod support;

use anyhow::{Context as _, bail};
use palisade_e2e::{
    TempDir,
    ipsec_mesh::{KEY_3, routed_nodes, start_ipsec},
    mesh::{Node, PalisadePair},
    on_path,
};

/// Runs per case; the median is reported.
const ROUNDS: usize = 3;
/// Seconds per iperf3 run.
const SECONDS: u32 = 4;

/// ChaCha20-Poly1305, per node pair.
const CHACHA_KEY: &str = "3+ rfc7539esp(chacha20,poly1305) 0x2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f4041424344 128\n";

/// The median throughput of `ROUNDS` runs of `SECONDS`.
fn throughput(from: &Node, to: &Node) -> anyhow::Result<f64> {
    support::throughput(from, to, ROUNDS, SECONDS)
}

fn clear() -> anyhow::Result<f64> {
    let (a, b) = routed_nodes()?;
    throughput(&a, &b)
}

fn ipsec(keys: &str) -> anyhow::Result<f64> {
    let work = TempDir::new("ipsecbench")?;
    let (a, b) = routed_nodes()?;
    let _a = start_ipsec(&a, &b, &work.path().join("a"), keys, "tunnel", false)?;
    let _b = start_ipsec(&b, &a, &work.path().join("b"), keys, "tunnel", false)?;
    throughput(&a, &b)
}

fn wireguard() -> anyhow::Result<f64> {
    let work = TempDir::new("wgbench")?;
    let pair = PalisadePair::start(work.path(), false)?;
    let status = pair.a_daemon.ctl(&["wireguard", "status", "-o", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    if status["backend"] != "kernel" {
        bail!("palisade's WireGuard is not the kernel's here ({status}): run this in the guest");
    }
    throughput(&pair.a, &pair.b)
}

fn main() -> anyhow::Result<()> {
    support::require_root("encryption")?;
    for tool in ["iperf3", "ping"] {
        if !on_path(tool) {
            bail!("{tool} is missing: `cargo xtask setup` installs it");
        }
    }
    println!(
        "encryption: iperf3 TCP, {SECONDS} s x {ROUNDS}, median, pod to pod between two nodes"
    );
    let clear = clear().context("measuring the clear reference")?;
    println!("in the clear              {clear:>8.0} Mbit/s");
    let gcm = ipsec(KEY_3).context("measuring IPsec (AES-GCM)")?;
    println!("palisade IPsec AES-GCM    {gcm:>8.0} Mbit/s");
    let chacha = ipsec(CHACHA_KEY).context("measuring IPsec (ChaCha20-Poly1305)")?;
    println!("palisade IPsec ChaCha20   {chacha:>8.0} Mbit/s");
    let wireguard = wireguard().context("measuring kernel WireGuard")?;
    println!("palisade kernel WireGuard {wireguard:>8.0} Mbit/s");
    println!(
        "IPsec AES-GCM / WireGuard: {:.2}; ChaCha20 / WireGuard: {:.2}; WireGuard / clear: {:.2}",
        gcm / wireguard,
        chacha / wireguard,
        wireguard / clear
    );
    support::write_result(
        "encryption.json",
        &serde_json::json!({
            "clear_mbps": clear,
            "ipsec_aes_gcm_mbps": gcm,
            "ipsec_chacha20_mbps": chacha,
            "wireguard_kernel_mbps": wireguard,
        }),
    )
}
