//! `cargo xtask package`: the .deb and the .rpm, into `target/packages/`.
//!
//! Builds the release binaries, generates the man pages and completions,
//! stages what the packages take from the build under
//! `target/release/package-staging/` (the packaged palisade.toml, gzipped man pages,
//! completions, stripped binaries for the rpm), then runs `cargo deb` and `cargo generate-rpm` with the
//! metadata in daemon/Cargo.toml. Installs both tools when missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, docs, setup::check, workspace};

/// Tools the packages are made with, pinned so the packages do not change
/// under us.
const TOOLS: [(&str, &str, &str); 2] = [
    ("cargo-deb", "3.8.0", "deb"),
    ("cargo-generate-rpm", "0.21.1", "generate-rpm"),
];

/// The line of etc/palisade.toml the package changes to list no interface.
const EXAMPLE_INTERFACES: &str = "interfaces = [\"eth0\"]";
/// The line of etc/palisade.toml the package changes to start in audit mode.
const EXAMPLE_AUDIT_MODE: &str = "# audit_mode = false";

/// Builds both packages and returns their paths, sorted by name.
pub fn run() -> anyhow::Result<Vec<PathBuf>> {
    tools()?;
    cargo(&["build", "--release", "--bins"])?;
    let root = workspace();
    let staging = root.join("target/release/package-staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("clearing {}", staging.display()))?;
    }
    docs(&root.join("target/release"), &staging)?;
    let example = std::fs::read_to_string(root.join("etc/palisade.toml"))
        .context("reading etc/palisade.toml")?;
    std::fs::write(staging.join("palisade.toml"), packaged_config(&example)?)?;
    for section in ["man1", "man8"] {
        gzip_all(&staging.join("man").join(section))?;
    }
    // cargo deb strips what it packs; the rpm takes these stripped copies.
    let bin = staging.join("bin");
    std::fs::create_dir_all(&bin)?;
    for name in ["palisaded", "palisadectl", "palisade-cni"] {
        check(
            Command::new("strip")
                .arg("--strip-unneeded")
                .arg("-o")
                .arg(bin.join(name))
                .arg(root.join("target/release").join(name)),
        )?;
    }
    let out = root.join("target/packages");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let out_arg = out.display().to_string();
    cargo(&[
        "deb",
        "-p",
        "palisade-daemon",
        "--no-build",
        "--output",
        &out_arg,
    ])?;
    cargo(&["generate-rpm", "-p", "daemon", "--output", &out_arg])?;
    let mut packages: Vec<PathBuf> = std::fs::read_dir(&out)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "deb" || ext == "rpm")
        })
        .collect();
    packages.sort();
    if packages.len() != 2 {
        bail!(
            "expected one .deb and one .rpm in {}, found {packages:?}",
            out.display()
        );
    }
    for package in &packages {
        eprintln!("built {}", package.display());
    }
    Ok(packages)
}

/// The configuration the packages install: the documented example, but with
/// no interface to enforce on and in audit mode, so installing drops nothing.
pub fn packaged_config(example: &str) -> anyhow::Result<String> {
    for line in [EXAMPLE_INTERFACES, EXAMPLE_AUDIT_MODE] {
        if example.lines().filter(|l| *l == line).count() != 1 {
            bail!("etc/palisade.toml should have the line {line:?} exactly once");
        }
    }
    Ok(example
        .lines()
        .map(|line| match line {
            EXAMPLE_INTERFACES => {
                "# The package lists none: name yours, e.g. [\"eth0\"], then reload.\ninterfaces = []"
                    .to_owned()
            }
            EXAMPLE_AUDIT_MODE => {
                "# The package starts in audit mode; set false to enforce.\naudit_mode = true"
                    .to_owned()
            }
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// Installs the pinned packaging tools that are missing.
fn tools() -> anyhow::Result<()> {
    for (krate, version, subcommand) in TOOLS {
        let installed = Command::new("cargo")
            .args([subcommand, "--version"])
            .output()
            .is_ok_and(|output| {
                output.status.success() && String::from_utf8_lossy(&output.stdout).contains(version)
            });
        if !installed {
            cargo(&["install", "--locked", krate, "--version", version])?;
        }
    }
    Ok(())
}

/// Compresses every file in `directory` with `gzip -9n` (reproducible, as
/// Debian policy asks of man pages).
fn gzip_all(directory: &Path) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(directory).with_context(|| format!("reading {}", directory.display()))?
    {
        check(Command::new("gzip").args(["-9nf"]).arg(entry?.path()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_config_enforces_nothing_until_told() {
        let example = std::fs::read_to_string(workspace().join("etc/palisade.toml")).unwrap();
        let packaged = packaged_config(&example).unwrap();
        assert!(packaged.lines().any(|line| line == "interfaces = []"));
        assert!(packaged.lines().any(|line| line == "audit_mode = true"));
        assert!(!packaged.contains(EXAMPLE_INTERFACES));
        assert_eq!(
            packaged.lines().count(),
            example.lines().count() + 2,
            "only the two settings and their comments change"
        );
        assert!(packaged_config("interfaces = []\n").is_err());
    }
}
