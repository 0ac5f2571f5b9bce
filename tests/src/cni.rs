//! Running palisade-cni as a runtime does: directly, with the `CNI_*`
//! environment and a configuration on stdin (as containernetworking/plugins'
//! own tests do), or through libcni by `cnitool`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::Context as _;

use crate::{Netns, binary};

/// Where `cargo xtask setup` installs cnitool (libcni 1.3: the first that
/// sends STATUS and GC).
pub const CNITOOL: &str = "/opt/palisade-test-tools/cnitool-v1.3.0/cnitool";
/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// What one plugin run printed, and its exit code.
#[derive(Debug, Clone)]
pub struct PluginRun {
    /// stdout, parsed (`Null` when empty).
    pub output: serde_json::Value,
    /// stdout as printed.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// Whether it exited 0.
    pub success: bool,
}

impl PluginRun {
    /// The error code of a failed run.
    pub fn code(&self) -> Option<u64> {
        self.output.get("code").and_then(serde_json::Value::as_u64)
    }

    /// The details of a failed run.
    pub fn details(&self) -> &str {
        self.output
            .get("details")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }
}

/// `CNI_PATH` for the tests: palisade-cni's directory, then the reference
/// plugins.
///
/// # Errors
///
/// When palisade-cni is not built.
pub fn cni_path() -> anyhow::Result<String> {
    let plugin = binary("palisade-cni")?;
    let directory = plugin.parent().context("palisade-cni has no directory")?;
    Ok(format!("{}:{REFERENCE_PLUGINS}", directory.display()))
}

/// Runs `plugin` (a file name in [`cni_path`]) in `host` with the given
/// environment and `config` on stdin.
///
/// # Errors
///
/// When it cannot be run.
pub fn invoke(
    host: &Netns,
    plugin: &str,
    env: &[(&str, &str)],
    config: &serde_json::Value,
) -> anyhow::Result<PluginRun> {
    let path = cni_path()?;
    let program = std::env::split_paths(&path)
        .map(|directory| directory.join(plugin))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("no {plugin} in {path}"))?;
    let mut command = host.command(&program);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", &path)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(&serde_json::to_vec(config)?)?;
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(PluginRun {
        output: if stdout.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&stdout)
                .with_context(|| format!("{plugin} printed no JSON: {stdout}"))?
        },
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
    })
}

/// Runs `cnitool COMMAND NETWORK NETNS` in `host`, with conflists from
/// `conf_dir`, and `env` besides.
///
/// # Errors
///
/// When cnitool cannot be run.
pub fn cnitool(
    host: &Netns,
    conf_dir: &Path,
    command: &str,
    network: &str,
    netns: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<PluginRun> {
    let output = host
        .command(CNITOOL)
        .args([command, network])
        .arg(netns)
        .env("NETCONFPATH", conf_dir)
        .env("CNI_PATH", cni_path()?)
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {CNITOOL} (`cargo xtask setup` installs it)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(PluginRun {
        output: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
    })
}

/// The path of a named namespace.
pub fn netns_path(netns: &Netns) -> PathBuf {
    Path::new("/run/netns").join(netns.name())
}
