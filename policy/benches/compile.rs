//! Where reading and compiling a policy of 1k, 10k and 100k CIDR rules
//! spends its time, median of several runs, stage by stage:
//! - TOML: syntax and schema (`from_toml`), then validation; the whole
//!   reader (`policy_from_toml`);
//! - YAML: the reader (`policies_from_yaml`) and, on its own, its walk of
//!   field positions (`walk_field_positions`), which it makes first;
//! - compiling from scratch (`compile`), and a one-rule change beside the
//!   policy through a [`TableCompiler`] that holds it (what an apply pays).
//!
//! Target: compiling 100k rules under 1 s. Run with `cargo xtask bench
//! policy`. The rules are what large host firewalls hold: one peer CIDR each
//! (IPv4 /32s and /24s, IPv6 /64s), a port or a port range, one in ten a
//! deny, and one in fifty a /28 that covers some of the /32s, so the
//! compiler's flattening of nested prefixes is exercised.
//!
//! Writes `target/bench/policy_compile.json`.

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use palisade_policy::{
    NodeContext, Policy, TableCompiler, compile, from_toml, policies_from_yaml, policies_to_yaml,
    policy_from_toml, validate::validate, yaml::walk_field_positions,
};

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

/// A host policy named `name` with `rules` ingress and egress entries.
fn policy_text(name: &str, rules: usize) -> String {
    let mut text = format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\" }}\n[spec]\nnodeSelector = {{}}\n"
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

/// A one-rule policy beside the large one, on `port`.
fn one_rule(port: u16) -> Arc<Policy> {
    let text = format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"one\" }}\n[spec]\nnodeSelector = {{}}\n[[spec.ingress]]\nfromCIDR = [\"192.0.2.0/24\"]\ntoPorts = [{{ ports = [{{ port = {port}, protocol = \"TCP\" }}] }}]\n"
    );
    Arc::new(policy_from_toml("one.toml", &text).expect("the one-rule policy parses"))
}

/// Milliseconds.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Runs `work` `ROUNDS` times; the median time.
fn timed<T>(mut work: impl FnMut() -> T) -> Duration {
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(work());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The stages' medians for one size.
struct Row {
    rules: usize,
    stages: [(&'static str, Duration); 7],
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = NodeContext::default();
    let mut results = Vec::new();
    let names = [
        "toml_schema",
        "toml_validate",
        "toml_read",
        "yaml_walk",
        "yaml_read",
        "compile",
        "one_rule_change",
    ];
    print!("{:>8}", "rules");
    for name in names {
        print!(" {:>16}", format!("{name} ms"));
    }
    println!();
    for rules in SIZES {
        let text = policy_text("bench", rules);
        let policy = policy_from_toml("bench.toml", &text)?;
        let yaml = policies_to_yaml(std::slice::from_ref(&policy))?;
        let large = Arc::new(policy.clone());
        let (_, holding) =
            TableCompiler::new(node.clone()).compile(&[large.clone(), one_rule(1)])?;
        let mut port = 1;
        let stages = [
            timed(|| from_toml::<Policy>("bench.toml", &text)),
            timed(|| validate(&policy)),
            timed(|| policy_from_toml("bench.toml", &text)),
            timed(|| walk_field_positions(&yaml)),
            timed(|| policies_from_yaml("bench.yaml", &yaml)),
            timed(|| compile(std::slice::from_ref(&policy), &node)),
            timed(|| {
                port += 1;
                holding.compile(&[large.clone(), one_rule(port)])
            }),
        ];
        print!("{rules:>8}");
        for stage in stages {
            print!(" {:>16.1}", ms(stage));
        }
        println!();
        let stages: Vec<(&'static str, Duration)> = names.into_iter().zip(stages).collect();
        results.push(Row {
            rules,
            stages: stages.try_into().expect("one time per stage"),
        });
    }
    let largest = results[results.len() - 1].stages[5].1;
    println!(
        "compile at 100k rules: {:.0} ms (target < {} ms: {})",
        ms(largest),
        TARGET.as_millis(),
        if largest < TARGET { "met" } else { "MISSED" }
    );
    let mut json = String::from("{\"compile\": [");
    for (i, row) in results.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"rules\": {}",
            if i > 0 { ", " } else { "" },
            row.rules
        );
        for (name, time) in row.stages {
            let _ = write!(json, ", \"{name}_ms\": {:.3}", ms(time));
        }
        json.push('}');
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
