//! Builds the eBPF programs with the pinned nightly and embeds them.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The toolchain the eBPF crate is built with (rustc 1.99 nightly, LLVM 22);
/// `cargo xtask setup` installs it with rust-src and a matching bpf-linker.
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "palisade-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Package::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(EBPF_TOOLCHAIN)).context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the pinned nightly and bpf-linker",
    )
}
