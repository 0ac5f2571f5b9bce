//! The apply benchmark (`cargo xtask bench apply`): how long a change of
//! policy takes end to end — `palisadectl apply` through the control socket
//! of a palisaded enforcing on a veth in a namespace, which answers once the
//! new table judges packets — against `nft -f` of the same rules in a
//! namespace of its own, in the same run. Median and p99 (of 20, the
//! slowest) per case:
//!
//! - a one-rule change beside a 10-rule table, and beside a 100k-prefix one
//!   (1,000 rules of 100 CIDRs each);
//! - a whole 10k-prefix table (100 rules of 100 CIDRs) and a whole 100k one,
//!   each apply replacing every rule.
//!
//! Writes `target/bench/apply.json`.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

mod support;

use anyhow::{Context as _, bail};
use palisade_e2e::{Daemon, Netns, TempDir, Topology, binary, run};

/// Applies per case.
const APPLIES: usize = 20;
/// CIDRs per rule in the large tables.
const CIDRS_PER_RULE: usize = 100;

/// A host policy named `name` of `rules` ingress rules, each allowing TCP
/// `port` from `cidrs` prefixes of its own.
fn policy(name: &str, rules: usize, cidrs: usize, port: u16) -> String {
    let mut text = format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\" }}\n[spec]\nnodeSelector = {{}}\n"
    );
    for rule in 0..rules {
        let list: Vec<String> = (0..cidrs)
            .map(|i| format!("\"{}\"", prefix(rule * cidrs + i)))
            .collect();
        let _ = write!(
            text,
            "[[spec.ingress]]\nfromCIDR = [{}]\ntoPorts = [{{ ports = [{{ port = \"{port}\", protocol = \"TCP\" }}] }}]\n",
            list.join(", ")
        );
    }
    text
}

/// The `n`-th distinct /24 in 11.0.0.0/8 and up.
fn prefix(n: usize) -> String {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    format!("{}.{}.{}.0/24", 11 + (n >> 16), (n >> 8) & 0xff, n & 0xff)
}

/// The same rules for nftables: one table, a rule per policy rule.
fn nft_table(rules: usize, cidrs: usize, port: u16) -> String {
    let mut text = String::from(
        "table inet bench\ndelete table inet bench\ntable inet bench {\n  chain delta {\n  }\n  chain input {\n    type filter hook input priority 0; policy drop;\n    jump delta\n",
    );
    for rule in 0..rules {
        let list: Vec<String> = (0..cidrs).map(|i| prefix(rule * cidrs + i)).collect();
        let _ = writeln!(
            text,
            "    ip saddr {{ {} }} tcp dport {port} accept",
            list.join(", ")
        );
    }
    text.push_str("  }\n}\n");
    text
}

/// A one-rule change for nftables: the `delta` chain's only rule.
fn nft_delta(port: u16) -> String {
    format!(
        "flush chain inet bench delta\nadd rule inet bench delta ip saddr 203.0.113.7 tcp dport {port} accept\n"
    )
}

/// One measured case: `base` put in force once, then the two `variants`
/// applied in turn.
struct Case {
    name: &'static str,
    base: Option<(String, String)>,
    variants: [(String, String); 2],
}

fn cases() -> Vec<Case> {
    let delta = |port| (policy("delta", 1, 1, port), nft_delta(port));
    let whole = |rules, port| {
        (
            policy("whole", rules, CIDRS_PER_RULE, port),
            nft_table(rules, CIDRS_PER_RULE, port),
        )
    };
    vec![
        Case {
            name: "one rule beside 10 rules",
            base: Some((policy("base", 10, 1, 443), nft_table(10, 1, 443))),
            variants: [delta(8443), delta(9443)],
        },
        Case {
            name: "one rule beside 100k prefixes",
            base: Some((
                policy("base", 1000, CIDRS_PER_RULE, 443),
                nft_table(1000, CIDRS_PER_RULE, 443),
            )),
            variants: [delta(8443), delta(9443)],
        },
        Case {
            name: "whole 10k prefixes",
            base: None,
            variants: [whole(100, 443), whole(100, 8443)],
        },
        Case {
            name: "whole 100k prefixes",
            base: None,
            variants: [whole(1000, 443), whole(1000, 8443)],
        },
    ]
}

/// Median and p99 (of `APPLIES`, the slowest) in milliseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
    )
}

/// The medians, in ms, of the stage timings palisaded logged with each
/// "policy applied" line of `log` after its first `skip` lines: compile,
/// save, install (the rest of an apply is reading the request and the
/// round trip).
fn stages(log: &str, skip: usize) -> [f64; 3] {
    let mut columns = [Vec::new(), Vec::new(), Vec::new()];
    for line in log
        .lines()
        .skip(skip)
        .filter(|line| line.contains("policy applied"))
    {
        for (column, field) in columns
            .iter_mut()
            .zip(["compile_ms=", "save_ms=", "install_ms="])
        {
            let value = line
                .split_once(field)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|text| text.parse::<f64>().ok());
            column.extend(value);
        }
    }
    columns.map(|column| {
        if column.is_empty() {
            f64::NAN
        } else {
            support::median(column)
        }
    })
}

/// Runs `command` and how long it took; fails with its stderr.
fn timed(command: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = command.output().context("running a measured command")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

/// `palisadectl apply -f file` against `daemon`.
fn palisade_apply(daemon: &Daemon, file: &Path) -> anyhow::Result<Duration> {
    timed(
        Command::new(binary("palisadectl")?)
            .arg("--socket")
            .arg(daemon.socket())
            .args(["apply", "-f"])
            .arg(file),
    )
}

/// `nft -f file` inside `netns`.
fn nft_apply(netns: &Netns, file: &Path) -> anyhow::Result<Duration> {
    timed(netns.command("nft").arg("-f").arg(file))
}

fn main() -> anyhow::Result<()> {
    support::require_root("apply")?;
    if Command::new("nft").arg("--version").output().is_err() {
        bail!("nft is missing: `cargo xtask setup` installs nftables");
    }
    let topology = Topology::new()?;
    let nft_host = Netns::new("bench-nft")?;
    let workdir = TempDir::new("bench-apply")?;
    let policies = workdir.path().join("policies.d");
    std::fs::create_dir(&policies)?;
    let daemon = Daemon::start_with_config_text(
        &topology.node,
        "[datapath]\ninterfaces = [\"eth0\"]\npolicy_map_max = 262144\n",
        &policies,
        workdir.path(),
    )?;
    println!(
        "apply: palisadectl apply through the socket against nft -f, {APPLIES} applies per case (ms)"
    );
    println!(
        "{:<32} {:>14} {:>14} {:>10} {:>10}   palisaded's stages (p50): compile, save, install",
        "case", "palisade p50", "palisade p99", "nft p50", "nft p99"
    );
    let mut rows = Vec::new();
    for case in cases() {
        let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
            let path = workdir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        if let Some((policy, nft)) = &case.base {
            palisade_apply(&daemon, &write("base.toml", policy)?)?;
            nft_apply(&nft_host, &write("base.nft", nft)?)?;
        }
        let files = [
            (
                write("a.toml", &case.variants[0].0)?,
                write("a.nft", &case.variants[0].1)?,
            ),
            (
                write("b.toml", &case.variants[1].0)?,
                write("b.nft", &case.variants[1].1)?,
            ),
        ];
        let (mut palisade, mut nft) = (Vec::new(), Vec::new());
        let log_lines = daemon.log().lines().count();
        for i in 0..APPLIES {
            let (policy, ruleset) = &files[i % 2];
            palisade.push(palisade_apply(&daemon, policy)?);
            nft.push(nft_apply(&nft_host, ruleset)?);
        }
        let (palisade, nft) = (summary(palisade), summary(nft));
        let [compile, save, install] = stages(&daemon.log(), log_lines);
        println!(
            "{:<32} {:>14.1} {:>14.1} {:>10.1} {:>10.1}   {compile:.1}, {save:.1}, {install:.1}",
            case.name, palisade.0, palisade.1, nft.0, nft.1
        );
        rows.push(serde_json::json!({
            "case": case.name,
            "palisade_ms": { "p50": palisade.0, "p99": palisade.1 },
            "nft_ms": { "p50": nft.0, "p99": nft.1 },
            "palisaded_stages_p50_ms": { "compile": compile, "save": save, "install": install },
        }));
        // The next case starts from an empty node, as it says.
        for name in ["base", "delta", "whole"] {
            let _ = Command::new(binary("palisadectl")?)
                .arg("--socket")
                .arg(daemon.socket())
                .args(["policy", "delete", name])
                .output();
        }
        run(nft_host.command("nft").args(["flush", "ruleset"]))?;
    }
    support::write_result(
        "apply.json",
        &serde_json::json!({ "applies": APPLIES, "cases": rows }),
    )
}
