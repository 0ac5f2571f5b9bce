//! `cargo xtask setup`: installs, idempotently, what building and testing need.
//!
//! - Debian packages (iproute2 for namespaces, nftables, bpftool, and the
//!   packaging tools the package tests use);
//! - the pinned eBPF nightly with rust-src and clippy (the eBPF crate is
//!   linted for its BPF target);
//! - bpf-linker built against that nightly's own LLVM (plain
//!   `cargo install bpf-linker` needs a system LLVM 22 these machines lack);
//! - cargo-fuzz, for the fuzz targets under fuzz/;
//! - cnitool and crictl, built with Go, for the CNI tests.
//!
//! Each step checks first and does nothing when its part is already there.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Must match daemon/build.rs; the fuzz targets build with it too.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where the nightly's libLLVM is linked for bpf-linker's build and run.
const LLVM_PREFIX: &str = "/opt/rustllvm";
/// iproute2, nftables and bpftool for the namespace tests; binutils (strip),
/// lintian, rpmlint, rpm, debootstrap and systemd-container for the package
/// tests (lint, and a booted Debian root); wg, wireguard-go, tcpdump and ping for the
/// WireGuard tests, iperf3 for the WireGuard benchmark; qemu, busybox-static,
/// kmod (depmod) and cpio for the kernel matrix; containernetworking-plugins
/// (host-local, ptp), podman, containerd, runc, gcc and libc6-dev (a static
/// `pause` image) for the CNI tests.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "bpftool",
    "binutils",
    "lintian",
    "rpmlint",
    "rpm",
    "debootstrap",
    "systemd-container",
    "wireguard-tools",
    "wireguard-go",
    "tcpdump",
    "iputils-ping",
    "iperf3",
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "containernetworking-plugins",
    "podman",
    "containerd",
    "runc",
    "gcc",
    "libc6-dev",
];

/// The Go-built test tools, each from its module into the directory of the
/// path the tests run it from: cnitool (libcni 1.3 is the first to send
/// STATUS and GC) and crictl (a CRI client, as a kubelet).
const GO_TOOLS: &[(&str, &str)] = &[
    (
        palisade_e2e::cni::CNITOOL,
        "github.com/containernetworking/cni/cnitool@v1.3.0",
    ),
    (
        palisade_e2e::runtimes::CRICTL,
        "sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0",
    ),
];

/// cargo-fuzz, which `cargo xtask test` runs the fuzz targets with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs every step.
pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    ebpf_toolchain()?;
    bpf_linker()?;
    cargo_fuzz()?;
    go_tools()
}

fn go_tools() -> anyhow::Result<()> {
    for (path, module) in GO_TOOLS {
        let tool = Path::new(path);
        if tool.is_file() {
            continue;
        }
        let directory = tool.parent().context("a Go tool's path has no directory")?;
        check(
            Command::new("go")
                .args(["install", module])
                .env("GOBIN", directory)
                .env("GOFLAGS", "-mod=mod"),
        )
        .with_context(|| {
            format!("building {module} (Go 1.26 and the Go module proxy are needed)")
        })?;
    }
    Ok(())
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo-fuzz")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)
        });
    if installed {
        return Ok(());
    }
    check(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]),
    )
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `command` (echoing it), failing unless it succeeds.
pub fn check(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let output = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output();
            !output
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing packages {}; install them with `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    check(Command::new("apt-get").args(["update", "-q"]))?;
    check(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ebpf_toolchain() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .output()
        .is_ok_and(|o| {
            let components = String::from_utf8_lossy(&o.stdout);
            o.status.success() && components.contains("rust-src") && components.contains("clippy")
        });
    if installed {
        return Ok(());
    }
    check(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))
}

/// The nightly's libLLVM, e.g. `.../lib/libLLVM.so.22.1-rust-1.99.0-nightly`.
fn nightly_libllvm() -> anyhow::Result<PathBuf> {
    let output = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .context("asking rustup for the nightly's sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") {
            return Ok(path);
        }
    }
    bail!("no libLLVM.so.* in {}", lib.display())
}

fn bpf_linker() -> anyhow::Result<()> {
    let working = succeeds(Command::new("bpf-linker").arg("--version"));
    if working {
        return Ok(());
    }
    let libllvm = nightly_libllvm()?;
    let lib_dir = Path::new(LLVM_PREFIX).join("lib");
    std::fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let file_name = libllvm.file_name().context("libLLVM has no file name")?;
    for link in [lib_dir.join("libLLVM.so"), lib_dir.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    check(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}
