//! The host side of a test: requirements (root, tools), commands, child
//! processes and temporary directories, the built binaries.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::unique;

/// Fails the calling test unless this process is root: the privileged
/// tests (namespaces, BPF) are `#[ignore]`d, so a plain `cargo test` lists
/// them as ignored, and `cargo xtask test` runs them with `--include-ignored`;
/// a privileged test that runs and cannot do its work fails, it never passes.
///
/// # Panics
///
/// When the effective user is not root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, BPF): run the privileged tests as root, \
         through `cargo xtask test`"
    );
}

/// Whether `tool` is on the PATH.
pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Fails the calling test unless every one of `tools` is on the PATH
/// (`cargo xtask setup` installs them).
///
/// # Panics
///
/// When a tool is missing.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        assert!(
            on_path(tool),
            "this test needs {tool}; `cargo xtask setup` installs it"
        );
    }
}

/// Runs a command to completion, failing with its stderr when it fails.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The workspace root (where `etc/` is).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Takes ownership of `child`.
    pub fn new(child: Child) -> Self {
        Self { child }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's piped standard output.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Takes the process's stderr (when it was piped).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process: SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if self.has_exited() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.has_exited() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a process with this pid exists.
pub fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temp directory.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(unique(role));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where cargo put this workspace's binaries (`target/<profile>/`), found from
/// the running executable (a test in `target/<profile>/deps/`, or xtask).
///
/// # Errors
///
/// When `name` has not been built.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --bins` first (`cargo xtask test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// A Debian 12 root made once by debootstrap (minbase with systemd), under
/// target/ so nothing is kept outside the repository; each user boots a
/// copy (the package test under systemd-nspawn, the kernel matrix under
/// qemu).
///
/// # Errors
///
/// When debootstrap fails.
pub fn debian_root() -> anyhow::Result<PathBuf> {
    let template = repo().join("target/nspawn/bookworm");
    let complete = template.with_extension("complete");
    if complete.exists() {
        return Ok(template);
    }
    if template.exists() {
        std::fs::remove_dir_all(&template)?;
    }
    std::fs::create_dir_all(template.parent().context("template has a parent")?)?;
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            "bookworm",
        ])
        .arg(&template)
        .arg("http://deb.debian.org/debian"))?;
    std::fs::write(&complete, "")?;
    Ok(template)
}
