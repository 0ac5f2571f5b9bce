//! `cargo xtask ...`: the entry point of the README's set-up commands.
//!
//! The workspace needs Rust 1.99 (aya), but `cargo xtask` is built by the
//! toolchain rustup defaults to, and with `RUSTUP_AUTO_INSTALL=0` a pinned
//! `rust-toolchain.toml` would stop cargo before any of our code ran. So the
//! pin lives here: this crate (std only, any toolchain since 1.85) installs
//! the pinned toolchain with rustup when it is missing and then replaces
//! itself with `palisade-tasks` (tasks/), built and run by that toolchain.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, ExitCode, Stdio},
};

/// The toolchain the workspace is built, linted and tested with.
const RUST_TOOLCHAIN: &str = "1.99";
/// Components `cargo xtask test` needs besides the compiler.
const COMPONENTS: [&str; 2] = ["clippy", "rustfmt"];

fn main() -> ExitCode {
    if let Err(message) = install_toolchain() {
        eprintln!("xtask: {message}");
        return ExitCode::FAILURE;
    }
    let error = Command::new("rustup")
        .args(["run", RUST_TOOLCHAIN, "cargo", "run", "--quiet"])
        .args(["--package", "palisade-tasks", "--"])
        .args(std::env::args_os().skip(1))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .exec();
    eprintln!("xtask: running palisade-tasks with rustup run {RUST_TOOLCHAIN} cargo: {error}");
    ExitCode::FAILURE
}

/// Installs `RUST_TOOLCHAIN` with its components unless it is there already.
fn install_toolchain() -> Result<(), String> {
    let listed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain"])
        .arg(RUST_TOOLCHAIN)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running rustup (palisade is built with rustup's toolchains): {e}"))?;
    let installed = String::from_utf8_lossy(&listed.stdout);
    if listed.status.success()
        && COMPONENTS
            .iter()
            .all(|component| installed.lines().any(|line| line.starts_with(component)))
    {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Rust {RUST_TOOLCHAIN} with {}",
        COMPONENTS.join(", ")
    );
    let mut install = Command::new("rustup");
    install.args([
        "toolchain",
        "install",
        RUST_TOOLCHAIN,
        "--profile",
        "minimal",
    ]);
    for component in COMPONENTS {
        install.args(["--component", component]);
    }
    let status = install
        .status()
        .map_err(|e| format!("running rustup toolchain install: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "rustup toolchain install {RUST_TOOLCHAIN} failed ({status})"
        ))
    }
}
