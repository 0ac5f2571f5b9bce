//! `cargo xtask setup | demo | test | docs | package | bench`: the project's tasks.

mod demo;
mod kernel_matrix;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// palisade's development tasks.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the build and the tests need (apt packages, the pinned
    /// nightly with rust-src, bpf-linker); does nothing when all is there.
    Setup,
    /// Run the firewall on its example config in network namespaces it creates,
    /// send allowed and denied traffic, and show the flows.
    Demo,
    /// fmt check, clippy -D warnings, the packages, every test (unit and
    /// end to end, the package tests among them; the host-firewall suites
    /// once more with cls_bpf filters instead of TCX links), the kernel
    /// matrix, and a minute of each fuzz target.
    Test,
    /// The kernel-only tests on Debian's kernels booted under qemu (as
    /// root): the programs against each kernel's verifier, the differential
    /// corpus, the host-firewall suites and the kernel WireGuard mesh.
    KernelMatrix {
        /// Only these suites (`palisade-daemon`, `host_firewall`,
        /// `datapath`, `enforcement_guard`, `wireguard`, and `package`: the
        /// .deb in a booted Debian 12); all when left out.
        suites: Vec<String>,
    },
    /// Generate the man pages and shell completions into target/assets/
    /// (man/man1, man/man8 and completions/).
    Docs,
    /// Build the .deb and the .rpm into target/packages/ (installs cargo-deb
    /// and cargo-generate-rpm when missing).
    Package,
    /// Benchmarks (as root), all of them or one: `datapath` (ns/packet by
    /// table size against an empty program, and veth drop rates of XDP, TC
    /// and nftables; target/bench/datapath.json), `flow-events` (the cost
    /// of a flow event; target/bench/flow_events.json), `policy` (reading
    /// and compiling 1k/10k/100k CIDR rules; target/bench/policy_compile.json)
    /// `wireguard` (iperf3 through palisade's tunnel and wireguard-go's;
    /// target/bench/wireguard.json), `encryption` (iperf3 in the clear,
    /// through palisade's IPsec and its kernel WireGuard, in the kernel
    /// matrix's guest; target/bench/encryption.json) and `apply`
    /// (palisadectl apply against nft -f, one-rule changes and whole
    /// tables; target/bench/apply.json).
    Bench {
        /// Which benchmark; all when left out.
        #[arg(value_enum)]
        which: Option<Benchmark>,
    },
}

/// The benchmarks `cargo xtask bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Benchmark {
    /// The datapath: per-packet cost and drop rates.
    Datapath,
    /// The cost of flow events.
    FlowEvents,
    /// Reading and compiling large policies.
    Policy,
    /// WireGuard throughput, palisade against wireguard-go.
    Wireguard,
    /// IPsec against kernel WireGuard throughput, in the kernel matrix's
    /// guest.
    Encryption,
    /// How long an apply takes, palisade against nft -f.
    Apply,
    /// A pod's ADD and DEL, palisade-cni against the stock ptp plugin.
    Cni,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => {
            setup::run()?;
            cargo(&["build", "--bins"])?;
            demo::run()
        }
        Task::Test => {
            setup::run()?;
            test()
        }
        Task::KernelMatrix { suites } => {
            setup::run()?;
            let packages = package::run()?;
            kernel_matrix::run(&suites, &deb(&packages)?)
        }
        Task::Docs => {
            cargo(&["build", "--bins"])?;
            let root = workspace();
            docs(&root.join("target/debug"), &root.join("target/assets"))
        }
        Task::Package => {
            setup::run()?;
            package::run().map(drop)
        }
        Task::Bench { which } => {
            setup::run()?;
            if which.is_none_or(|w| w == Benchmark::Datapath) {
                cargo(&["bench", "-p", "palisade-daemon", "--bench", "datapath"])?;
            }
            if which.is_none_or(|w| w == Benchmark::FlowEvents) {
                cargo(&["bench", "-p", "palisade-daemon", "--bench", "flow_events"])?;
            }
            if which.is_none_or(|w| w == Benchmark::Policy) {
                cargo(&["bench", "-p", "palisade-policy", "--bench", "compile"])?;
            }
            if which.is_none_or(|w| w == Benchmark::Wireguard) {
                cargo(&["bench", "-p", "palisade-daemon", "--bench", "wireguard"])?;
            }
            if which.is_none_or(|w| w == Benchmark::Encryption) {
                bench_encryption()?;
            }
            if which.is_none_or(|w| w == Benchmark::Cni) {
                // It runs the release palisade-cni and palisaded.
                cargo(&["build", "--release", "--bins"])?;
                cargo(&["bench", "-p", "palisade-daemon", "--bench", "cni"])?;
            }
            if which.is_none_or(|w| w == Benchmark::Apply) {
                // It runs the release palisaded and palisadectl beside it.
                cargo(&["build", "--release", "--bins"])?;
                cargo(&["bench", "-p", "palisade-daemon", "--bench", "apply"])?;
            }
            Ok(())
        }
    }
}

/// The encryption benchmark: built here, run in the kernel matrix's guest
/// (this kernel has neither ESP nor WireGuard).
fn bench_encryption() -> anyhow::Result<()> {
    cargo(&["build", "--bins"])?;
    let arguments = [
        "bench",
        "--no-run",
        "--message-format=json",
        "-p",
        "palisade-daemon",
        "--bench",
        "encryption",
    ];
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(arguments)
        .current_dir(workspace())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo bench --no-run")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo {} failed",
        arguments.join(" ")
    );
    let executable = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        // The package's binaries are built for its benchmarks too.
        .filter(|message| {
            message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bench"))
        })
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .next_back()
        .context("no benchmark executable from cargo bench --no-run")?;
    let results = workspace().join("target/bench");
    std::fs::create_dir_all(&results)?;
    kernel_matrix::run_benchmark(
        &executable,
        "encryption.json",
        &results.join("encryption.json"),
    )
}

/// The workspace root.
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Runs cargo in the workspace with `args`, failing if it fails.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(args, &[])
}

/// [`cargo`] with extra environment variables.
fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let shown: Vec<String> = env
        .iter()
        .map(|(key, value)| format!("{key}={value} "))
        .collect();
    eprintln!("+ {}cargo {}", shown.concat(), args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs the binary `name` from `binaries` with `args` and returns its stdout.
fn run_binary(binaries: &Path, name: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let binary = binaries.join(name);
    let output = Command::new(&binary)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{name} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Man pages (`man/man8/palisaded.8`, `man/man1/palisadectl*.1`) and
/// completions (bash, zsh, fish) under `out`, from the binaries in `binaries`.
fn docs(binaries: &Path, out: &Path) -> anyhow::Result<()> {
    let man1 = out.join("man/man1");
    let man8 = out.join("man/man8");
    let completions = out.join("completions");
    for directory in [&man1, &man8, &completions] {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("creating {}", directory.display()))?;
    }
    run_binary(
        binaries,
        "palisadectl",
        &["man", "--dir", &man1.display().to_string()],
    )?;
    std::fs::write(
        man8.join("palisaded.8"),
        run_binary(binaries, "palisaded", &["--man-page"])?,
    )?;
    // palisade-cni takes no arguments (a runtime runs it): its page is written by hand.
    std::fs::copy(
        workspace().join("packaging/palisade-cni.8"),
        man8.join("palisade-cni.8"),
    )
    .context("copying packaging/palisade-cni.8")?;
    for (shell, file) in [
        ("bash", "palisadectl.bash"),
        ("zsh", "_palisadectl"),
        ("fish", "palisadectl.fish"),
    ] {
        std::fs::write(
            completions.join(file),
            run_binary(binaries, "palisadectl", &["completion", shell])?,
        )?;
    }
    eprintln!(
        "man pages in {}, completions in {}",
        out.join("man").display(),
        completions.display()
    );
    Ok(())
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    clippy_ebpf()?;
    // The end-to-end tests run the built palisaded and palisadectl, and the
    // package tests install the packages.
    cargo(&["build", "--bins"])?;
    let packages = package::run()?;
    // The privileged tests (namespaces, BPF, the packages) are `#[ignore]`d
    // for a plain `cargo test`; here they run, and fail without root. Those
    // needing ESP, which this kernel lacks, run in the kernel matrix.
    let tested = cargo(&[
        "test",
        "--no-fail-fast",
        "--",
        "--include-ignored",
        "--skip",
        kernel_matrix::ESP_ONLY,
    ]);
    // This kernel has TCX: the host-firewall suites again on the other
    // attach path, cls_bpf filters.
    let tc_path = cargo_with_env(
        &[
            "test",
            "--no-fail-fast",
            "-p",
            "palisade-e2e",
            "--test",
            "host_firewall",
            "--test",
            "datapath",
            "--test",
            "enforcement_guard",
            "--",
            "--include-ignored",
        ],
        &[(palisade_e2e::ATTACH_OVERRIDE, "tc")],
    );
    let matrix = deb(&packages).and_then(|deb| kernel_matrix::run(&[], &deb));
    let fuzzed = fuzz();
    tested.and(tc_path).and(matrix).and(fuzzed)
}

/// The .deb among the built `packages`.
fn deb(packages: &[PathBuf]) -> anyhow::Result<PathBuf> {
    packages
        .iter()
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .cloned()
        .context("no .deb was built")
}

/// clippy -D warnings on the eBPF crate, for its own target with the
/// pinned nightly (as aya's xtask lints its eBPF crates).
fn clippy_ebpf() -> anyhow::Result<()> {
    setup::check(
        Command::new("rustup")
            .args([
                "run",
                setup::EBPF_TOOLCHAIN,
                "cargo",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(workspace().join("ebpf")),
    )
}

/// The fuzz targets under fuzz/ (cargo fuzz, libFuzzer), a bounded run of
/// each from the committed corpus; new inputs go to a scratch directory,
/// a crash fails the run and is kept under fuzz/artifacts/.
const FUZZ_TARGETS: [&str; 3] = ["policy_text", "config_toml", "api_requests"];
/// Seconds each target runs.
const FUZZ_SECONDS: u32 = 60;

fn fuzz() -> anyhow::Result<()> {
    let fuzz_dir = workspace().join("fuzz");
    for target in FUZZ_TARGETS {
        let scratch =
            std::env::temp_dir().join(format!("palisade-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let result = setup::check(
            Command::new("rustup")
                .args([
                    "run",
                    setup::EBPF_TOOLCHAIN,
                    "cargo",
                    "fuzz",
                    "run",
                    "-O",
                    target,
                ])
                .arg(&scratch)
                .arg(fuzz_dir.join("corpus").join(target))
                .args([
                    "--",
                    &format!("-max_total_time={FUZZ_SECONDS}"),
                    "-rss_limit_mb=1024",
                    "-max_len=65536",
                    "-print_final_stats=1",
                ])
                .current_dir(&fuzz_dir),
        );
        let _ = std::fs::remove_dir_all(&scratch);
        result.with_context(|| {
            format!("fuzz target {target} failed; the input is under fuzz/artifacts/{target}/")
        })?;
    }
    eprintln!("{} passed, 0 failed: fuzz targets", FUZZ_TARGETS.len());
    Ok(())
}
