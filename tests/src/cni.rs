//! Running palisade-cni as a runtime does: directly, with the `CNI_*`
//! environment and a configuration on stdin (as containernetworking/plugins'
//! own tests do), or through libcni by `cnitool`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::Context as _;
use palisade_api::EndpointList;
use serde_json::{Value, json};

use crate::{Daemon, Netns, TempDir, Topology, binary, repo, require_root};

/// The pod subnet of [`CniNode::main_config`].
pub const POD_SUBNET: &str = "10.77.0.0/24";
/// Its gateway: the host side of every pod's pair.
pub const POD_GATEWAY: &str = "10.77.0.1";

/// A node namespace running palisaded (no policy), and a work directory
/// for the CNI networks, IPAM leases and runtimes of a test.
#[derive(Debug)]
pub struct CniNode {
    /// The node and a client namespace joined to it.
    pub topology: Topology,
    /// palisaded in the node.
    pub daemon: Daemon,
    workdir: TempDir,
}

impl CniNode {
    /// Starts palisaded in a fresh node namespace.
    ///
    /// # Panics
    ///
    /// When not root, or palisaded does not come up.
    pub fn start(name: &str) -> Self {
        require_root();
        let workdir = TempDir::new(name).expect("workdir");
        let policies = workdir.path().join("policies.d");
        std::fs::create_dir(&policies).expect("policy dir");
        let topology = Topology::new().expect("namespaces");
        let daemon = Daemon::start(
            &topology.node,
            &repo().join("etc/palisade.toml"),
            &policies,
            workdir.path(),
        )
        .expect("palisaded starts");
        Self {
            topology,
            daemon,
            workdir,
        }
    }

    /// The node's namespace.
    pub fn host(&self) -> &Netns {
        &self.topology.node
    }

    /// The test's work directory.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// host-local's data directory.
    pub fn ipam_dir(&self) -> PathBuf {
        self.workdir.path().join("ipam")
    }

    /// palisade-cni as the main plugin of network `pods`, host-local
    /// addressing from [`POD_SUBNET`].
    pub fn main_config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "pods",
            "type": "palisade-cni",
            "socket": self.daemon.socket(),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.ipam_dir(),
            }
        })
    }

    /// [`CniNode::main_config`] as a conflist, for runtimes (the
    /// annotations capability on, as containerd needs it to pass them).
    pub fn main_conflist(&self) -> Value {
        let mut plugin = self.main_config("1.0.0");
        if let Some(object) = plugin.as_object_mut() {
            object.remove("cniVersion");
            object.remove("name");
            object.insert(
                "capabilities".to_owned(),
                json!({"io.kubernetes.cri.pod-annotations": true}),
            );
        }
        json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [plugin]})
    }

    /// The endpoints palisaded lists (`palisadectl endpoint list -o json`).
    ///
    /// # Panics
    ///
    /// When palisadectl fails.
    pub fn endpoints(&self) -> EndpointList {
        let output = self
            .daemon
            .ctl(&["endpoint", "list", "-o", "json"])
            .expect("palisadectl");
        assert!(
            output.status.success(),
            "endpoint list: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("endpoint list JSON")
    }

    /// The addresses host-local has leased in network `pods`.
    pub fn leases(&self) -> Vec<String> {
        let mut leases: Vec<String> = std::fs::read_dir(self.ipam_dir().join("pods"))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        leases.sort();
        leases
    }

    /// Whether host-local holds a lease for `address`.
    pub fn leased(&self, address: &str) -> bool {
        self.leases().iter().any(|lease| lease == address)
    }

    /// The host sides of pod pairs (`pal...`) in the node.
    pub fn pod_interfaces(&self) -> Vec<String> {
        let text = self.host().ip(&["-j", "link", "show"]).unwrap_or_default();
        let links: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|link| link["ifname"].as_str())
            .filter(|name| name.starts_with("pal"))
            .map(str::to_owned)
            .collect()
    }
}

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

/// The plugin `plugin` (a file name) in [`cni_path`], and that path.
///
/// # Errors
///
/// When palisade-cni is not built or no directory has the plugin.
pub fn find_plugin(plugin: &str) -> anyhow::Result<(PathBuf, String)> {
    let path = cni_path()?;
    let program = std::env::split_paths(&path)
        .map(|directory| directory.join(plugin))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("no {plugin} in {path}"))?;
    Ok((program, path))
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
    let (program, path) = find_plugin(plugin)?;
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
