//! How long a policy of 1k, 10k and 100k CIDR rules takes to read
//! (TOML text to a validated policy) and to compile (to the flattened rule
//! table), median of several runs. Target: compiling 100k rules under 1 s.
//! Run with `cargo xtask bench policy`.
//!
//! The rules are what large host firewalls hold: one peer CIDR each
//! (IPv4 /32s and /24s, IPv6 /64s), a port or a port range, one in ten a
//! deny, and one in fifty a /28 that covers some of the /32s, so the
//! compiler's flattening of nested prefixes is exercised.
//!
//! Writes `target/bench/policy_compile.json`.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use palisade_policy::{NodeContext, compile, policy_from_toml};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const ROUNDS: usize = 5;
const TARGET: Duration = Duration::from_secs(1);

/// The peer prefix of rule `i`.
fn cidr(i: usize) -> String {
    let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    match i % 50 {
        0 => format!("10.{a}.{b}.{}/28", c & 0xf0),
        1..=9 => format!("2001:db8:{a:x}:{:x}::/64", (b << 8) | c),
        10..=19 => format!("{}.{b}.{c}.0/24", 11 + a),
        _ => format!("10.{a}.{b}.{c}/32"),
    }
}

/// A host policy with `rules` ingress and egress entries.
fn policy_text(rules: usize) -> String {
    let mut text = String::from(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = { name = \"bench\" }\n[spec]\nnodeSelector = {}\n",
    );
    for i in 0..rules {
        let section = match (i % 10, i % 2) {
            (0, 0) => "ingressDeny",
            (0, _) => "egressDeny",
            (_, 0) => "ingress",
            _ => "egress",
        };
        let peer = if section.starts_with("ingress") {
            "fromCIDR"
        } else {
            "toCIDR"
        };
        let port = 1024 + (i % 30_000);
        let ports = if i % 7 == 0 {
            format!(
                "{{ port = {port}, endPort = {}, protocol = \"TCP\" }}",
                port + 15
            )
        } else {
            format!(
                "{{ port = {port}, protocol = \"{}\" }}",
                ["TCP", "UDP"][i % 2]
            )
        };
        let _ = write!(
            text,
            "[[spec.{section}]]\n{peer} = [\"{}\"]\ntoPorts = [{{ ports = [{ports}] }}]\n",
            cidr(i)
        );
    }
    text
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = NodeContext::default();
    let mut results = Vec::new();
    println!(
        "{:>8} {:>12} {:>12} {:>10}",
        "rules", "read ms", "compile ms", "rows"
    );
    for rules in SIZES {
        let text = policy_text(rules);
        let mut read_times = Vec::new();
        let mut compile_times = Vec::new();
        let mut rows = 0;
        for _ in 0..ROUNDS {
            let start = Instant::now();
            let policy = policy_from_toml("bench.toml", &text)?;
            read_times.push(start.elapsed());
            let start = Instant::now();
            let table = compile(std::slice::from_ref(&policy), &node)?;
            compile_times.push(start.elapsed());
            rows = table.ingress.entries.len() + table.egress.entries.len();
        }
        let (read, compiled) = (median(read_times), median(compile_times));
        println!(
            "{rules:>8} {:>12.1} {:>12.1} {rows:>10}",
            read.as_secs_f64() * 1e3,
            compiled.as_secs_f64() * 1e3
        );
        results.push((rules, read, compiled, rows));
    }
    let (_, _, largest, _) = results[results.len() - 1];
    println!(
        "compile at 100k rules: {:.0} ms (target < {} ms: {})",
        largest.as_secs_f64() * 1e3,
        TARGET.as_millis(),
        if largest < TARGET { "met" } else { "MISSED" }
    );
    let mut json = String::from("{\"compile\": [");
    for (i, (rules, read, compiled, rows)) in results.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"rules\": {rules}, \"read_ms\": {:.3}, \"compile_ms\": {:.3}, \"rows\": {rows}}}",
            if i > 0 { ", " } else { "" },
            read.as_secs_f64() * 1e3,
            compiled.as_secs_f64() * 1e3
        );
    }
    json.push_str("]}\n");
    let path = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench/policy_compile.json");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, json)?;
    println!("wrote {}", path.display());
    Ok(())
}
