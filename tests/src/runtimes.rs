//! Real container runtimes for the CNI tests, each confined to a test's
//! node namespace and work directory: podman 4.3 with its CNI backend, and
//! containerd 1.6's CRI driven by crictl as a kubelet drives it. Images come
//! from no registry: a busybox-static root and a static `pause`, wrapped as
//! one-layer docker archives.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{ChildGuard, Netns, run};

/// Where `cargo xtask setup` installs crictl.
pub const CRICTL: &str = "/opt/palisade-test-tools/crictl-v1.37.0/crictl";
/// The busybox image's name.
pub const BUSYBOX_IMAGE: &str = "localhost/palisade-test/busybox:1";
/// The sandbox image's name.
pub const PAUSE_IMAGE: &str = "localhost/palisade-test/pause:1";

/// A `pause` that sleeps until a signal ends it.
const PAUSE_SOURCE: &str = "#include <signal.h>\n#include <unistd.h>\n\
static void stop(int signal) { (void)signal; _exit(0); }\n\
int main(void) { signal(SIGINT, stop); signal(SIGTERM, stop); for (;;) pause(); }\n";

/// Writes a one-layer docker archive of `rootfs` named `name` with `config`
/// (the image config's `config` object) to `archive`.
fn docker_archive(rootfs: &Path, name: &str, config: Value, archive: &Path) -> anyhow::Result<()> {
    let staging = archive.with_extension("d");
    std::fs::create_dir_all(&staging)?;
    let layer = staging.join("layer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let digest = run(Command::new("sha256sum").arg(&layer))?;
    let digest = digest.split_whitespace().next().context("sha256sum")?;
    let image_config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    std::fs::write(staging.join("config.json"), image_config.to_string())?;
    let manifest = json!([{"Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"]}]);
    std::fs::write(staging.join("manifest.json"), manifest.to_string())?;
    run(Command::new("tar")
        .arg("-C")
        .arg(&staging)
        .arg("-cf")
        .arg(archive)
        .args(["manifest.json", "config.json", "layer.tar"]))?;
    Ok(())
}

/// The busybox image (sh, sleep, ping, nc, ...) as a docker archive in `directory`.
///
/// # Errors
///
/// When busybox-static is missing or tar fails.
pub fn busybox_archive(directory: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = directory.join("busybox-root");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("copying /bin/busybox (`cargo xtask setup` installs busybox-static)")?;
    for tool in ["sh", "sleep", "ping", "nc", "ip", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(tool))?;
    }
    let archive = directory.join("busybox.tar");
    docker_archive(&rootfs, BUSYBOX_IMAGE, json!({"Cmd": ["sh"]}), &archive)?;
    Ok(archive)
}

/// The sandbox image (a static `pause` built with gcc) as a docker archive
/// in `directory`.
///
/// # Errors
///
/// When gcc cannot build it or tar fails.
pub fn pause_archive(directory: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = directory.join("pause-root");
    std::fs::create_dir_all(&rootfs)?;
    let source = directory.join("pause.c");
    std::fs::write(&source, PAUSE_SOURCE)?;
    run(Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(rootfs.join("pause"))
        .arg(&source))?;
    let archive = directory.join("pause.tar");
    docker_archive(
        &rootfs,
        PAUSE_IMAGE,
        json!({"Entrypoint": ["/pause"]}),
        &archive,
    )?;
    Ok(archive)
}

/// A command run in `node`'s network namespace only (not `ip netns exec`,
/// whose fresh /sys hides the cgroup mounts runtimes need).
fn in_node(node: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", node.name()))
        .arg("--")
        .arg(program);
    command
}

/// podman with the CNI backend, its configuration, storage and networks
/// under a directory of the test's; every container removed on drop.
#[derive(Debug)]
pub struct Podman {
    node: String,
    directory: PathBuf,
}

impl Podman {
    /// Configures podman in `directory` to run in `node` with the CNI
    /// networks of `network_dir` and plugins from `plugin_dirs`, and loads
    /// the busybox image.
    ///
    /// # Errors
    ///
    /// When the files cannot be written or the image not loaded.
    pub fn new(
        node: &Netns,
        directory: &Path,
        network_dir: &Path,
        plugin_dirs: &[PathBuf],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(directory)?;
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|dir| format!("{:?}", dir.display().to_string()))
            .collect();
        let path = |name: &str| directory.join(name).display().to_string();
        std::fs::write(
            directory.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = {:?}\ntmp_dir = {:?}\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {:?}\n",
                path("events.log"),
                path("tmp"),
                dirs.join(", "),
                network_dir.display().to_string(),
            ),
        )?;
        std::fs::write(
            directory.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = {:?}\ngraphroot = {:?}\n",
                path("runroot"),
                path("graphroot")
            ),
        )?;
        let podman = Self {
            node: node.name().to_owned(),
            directory: directory.to_owned(),
        };
        let archive = busybox_archive(&directory.join("images"))?;
        run(podman.command().arg("load").arg("-i").arg(&archive))?;
        Ok(podman)
    }

    /// `podman` in the node, with this configuration.
    pub fn command(&self) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.node))
            .args(["--", "podman"])
            .env("CONTAINERS_CONF", self.directory.join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.directory.join("storage.conf"),
            );
        command
    }

    /// Runs `podman ARGS...`, its stdout trimmed.
    ///
    /// # Errors
    ///
    /// When podman fails (its stderr is in the error).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(run(self.command().args(args))?.trim().to_owned())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "-af", "-t", "0"]).output();
    }
}

/// containerd serving the CRI in the node namespace, its root, state,
/// socket and CNI files under a directory of the test's; every pod
/// removed and containerd stopped on drop.
#[derive(Debug)]
pub struct Containerd {
    node: String,
    socket: PathBuf,
    process: ChildGuard,
}

impl Containerd {
    /// Starts containerd in `node` with the CNI networks of `network_dir`
    /// and the plugins of `bin_dir` (one directory: it is also CNI_PATH),
    /// and imports the busybox and pause images.
    ///
    /// # Errors
    ///
    /// When it does not come up or an image cannot be imported.
    pub fn start(
        node: &Netns,
        directory: &Path,
        network_dir: &Path,
        bin_dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(directory)?;
        let socket = directory.join("containerd.sock");
        let config = directory.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\n  address = {:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {PAUSE_IMAGE:?}\n\
                 restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"native\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = {:?}\n  conf_dir = {:?}\n",
                directory.join("root").display().to_string(),
                directory.join("state").display().to_string(),
                socket.display().to_string(),
                bin_dir.display().to_string(),
                network_dir.display().to_string(),
            ),
        )?;
        let log = std::fs::File::create(directory.join("containerd.log"))?;
        let child = in_node(node, "containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let containerd = Self {
            node: node.name().to_owned(),
            socket,
            process: ChildGuard::new(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while containerd.crictl(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!("containerd did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let images = directory.join("images");
        std::fs::create_dir_all(&images)?;
        for archive in [busybox_archive(&images)?, pause_archive(&images)?] {
            run(Command::new("ctr")
                .arg("--address")
                .arg(&containerd.socket)
                .args([
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--snapshotter",
                    "native",
                ])
                .arg(&archive))?;
        }
        Ok(containerd)
    }

    /// Runs `crictl ARGS...` in the node (exec streams from containerd's
    /// loopback there), its stdout trimmed.
    ///
    /// # Errors
    ///
    /// When crictl fails (its stderr is in the error).
    pub fn crictl(&self, args: &[&str]) -> anyhow::Result<String> {
        let endpoint = format!("unix://{}", self.socket.display());
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.node))
            .arg("--")
            .arg(CRICTL)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(args);
        Ok(run(&mut command)?.trim().to_owned())
    }

    /// RunPodSandbox of pod `namespace/name` with `labels` and
    /// `annotations`, then a busybox container in it sleeping: the pod's
    /// and the container's ids.
    ///
    /// # Errors
    ///
    /// When crictl fails.
    pub fn run_pod(
        &self,
        directory: &Path,
        namespace: &str,
        name: &str,
        labels: &Value,
        annotations: &Value,
    ) -> anyhow::Result<(String, String)> {
        std::fs::create_dir_all(directory.join("logs"))?;
        let pod = json!({
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "attempt": 1},
            "log_directory": directory.join("logs"),
            "labels": labels,
            "annotations": annotations,
            "linux": {},
        });
        let container = json!({
            "metadata": {"name": "main"},
            "image": {"image": BUSYBOX_IMAGE},
            "command": ["sleep", "3600"],
            "log_path": format!("{namespace}-{name}.log"),
            "linux": {},
        });
        let pod_file = directory.join(format!("{namespace}-{name}-pod.json"));
        let container_file = directory.join(format!("{namespace}-{name}-container.json"));
        std::fs::write(&pod_file, pod.to_string())?;
        std::fs::write(&container_file, container.to_string())?;
        let pod_file = pod_file.display().to_string();
        let pod_id = self.crictl(&["runp", &pod_file])?;
        let container_id = self.crictl(&[
            "create",
            &pod_id,
            &container_file.display().to_string(),
            &pod_file,
        ])?;
        self.crictl(&["start", &container_id])?;
        Ok((pod_id, container_id))
    }

    /// The pod's address, as the CRI reports it.
    ///
    /// # Errors
    ///
    /// When crictl fails or reports none.
    pub fn pod_ip(&self, pod_id: &str) -> anyhow::Result<String> {
        let status: Value = serde_json::from_str(&self.crictl(&["inspectp", pod_id])?)?;
        status["status"]["network"]["ip"]
            .as_str()
            .map(str::to_owned)
            .context("the pod has no address")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods first, so that no shim outlives containerd.
        let _ = self.crictl(&["rmp", "-af"]);
        self.process.stop();
    }
}
