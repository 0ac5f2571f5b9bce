//! palisaded under test: its derived configuration, start and restart,
//! palisadectl and the socket, logs; a policy to allow a prefix.

use std::{
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_config::{Config, ConfigFile};

use crate::{
    host::{ChildGuard, TempDir, binary, repo},
    netns::{Netns, Topology},
};

/// How to start palisaded beyond the defaults.
#[derive(Debug, Default)]
pub struct Launch<'a> {
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// A command palisaded is passed to as its last arguments.
    pub wrapper: &'a [&'a str],
    /// Keep the config's failsafe services. Off by default, so that tests
    /// can deny SSH; the failsafe tests turn it on.
    pub failsafe: bool,
}

/// A [`Launch::wrapper`] that runs palisaded with only the capabilities the
/// packaged unit grants (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON), as under
/// systemd: what works as full root may need more.
pub const UNIT_CAPABILITIES: &[&str] = &[
    "setpriv",
    "--bounding-set",
    "-all,+bpf,+net_admin,+perfmon",
    "--",
];

/// Pin directories handed out in this process, for unique names.
static PIN_DIRS: AtomicUsize = AtomicUsize::new(0);

/// Writes `config` with this daemon's own bpffs pin directory, its state
/// directory in `workdir/state` (and without failsafe services unless
/// `failsafe`) to `workdir/palisade.toml`.
fn derived_config(
    config: &Path,
    workdir: &Path,
    failsafe: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut derived = read_config(config)?;
    let pin_path = PathBuf::from(format!(
        "/sys/fs/bpf/palisade-e2e-{}-{}",
        std::process::id(),
        PIN_DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    derived.datapath.pin_path.clone_from(&pin_path);
    if let Some(attach) = attach_override()? {
        derived.datapath.attach = attach;
    }
    derived.policy.state_directory = workdir.join("state");
    if !failsafe {
        derived.failsafe.inbound.clear();
        derived.failsafe.outbound.clear();
    }
    let path = workdir.join("palisade.toml");
    write_config(&path, &derived)?;
    Ok((path, pin_path))
}

/// The environment variable that makes every test daemon attach TC its way
/// (`tcx` or `tc`), so one test suite covers both attach paths.
pub const ATTACH_OVERRIDE: &str = "PALISADE_E2E_ATTACH";

/// The `datapath.attach` [`ATTACH_OVERRIDE`] asks for.
fn attach_override() -> anyhow::Result<Option<palisade_config::TcAttachConfig>> {
    let Ok(value) = std::env::var(ATTACH_OVERRIDE) else {
        return Ok(None);
    };
    let attach = serde_json::from_value(serde_json::Value::String(value.clone()))
        .with_context(|| format!("{ATTACH_OVERRIDE}={value}: expected auto, tcx or tc"))?;
    Ok(Some(attach))
}

/// The configuration in `path`, as palisaded reads it.
fn read_config(path: &Path) -> anyhow::Result<Config> {
    ConfigFile::new(Some(path.to_owned()))
        .load()
        .with_context(|| format!("reading {}", path.display()))
}

/// Writes `config` to `path` as TOML.
fn write_config(path: &Path, config: &Config) -> anyhow::Result<()> {
    std::fs::write(path, toml::to_string(config)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A running palisaded inside a namespace, with its own socket, config,
/// policy directory and bpffs pin directory; stopped, and its pinned
/// programs and state removed, on drop.
#[derive(Debug)]
pub struct Daemon {
    process: ChildGuard,
    command: Vec<std::ffi::OsString>,
    netns: String,
    env: Vec<(String, String)>,
    socket: PathBuf,
    log: PathBuf,
    pin_path: PathBuf,
    config: PathBuf,
}

/// How long a start may take: seconds on this host, but under the kernel
/// matrix's TCG the first IPsec state loads the kernel's crypto modules,
/// whose self-tests take tens of seconds.
pub const START_LIMIT: Duration = Duration::from_secs(60);

impl Daemon {
    /// Starts palisaded in `netns` with (a copy of) `config` and `policy_dir`,
    /// its socket and log in `workdir`, and waits until the socket answers.
    ///
    /// # Errors
    ///
    /// When it does not come up within [`START_LIMIT`] (its log is in the
    /// error).
    pub fn start(
        netns: &Netns,
        config: &Path,
        policy_dir: &Path,
        workdir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(netns, config, policy_dir, workdir, &Launch::default())
    }

    /// [`Daemon::start`] with the configuration given as text (written to
    /// `workdir/config.toml`).
    ///
    /// # Errors
    ///
    /// As [`Daemon::start`], or when the file cannot be written.
    pub fn start_with_config_text(
        netns: &Netns,
        config_text: &str,
        policy_dir: &Path,
        workdir: &Path,
    ) -> anyhow::Result<Self> {
        let config = workdir.join("config.toml");
        std::fs::write(&config, config_text)
            .with_context(|| format!("writing {}", config.display()))?;
        Self::start(netns, &config, policy_dir, workdir)
    }

    /// [`Daemon::start`] with extra environment variables and a wrapper
    /// command (run inside the namespace, ending in `exec "$@"` or the like).
    ///
    /// # Errors
    ///
    /// When it does not come up within [`START_LIMIT`] (its log is in the
    /// error).
    pub fn start_with(
        netns: &Netns,
        config: &Path,
        policy_dir: &Path,
        workdir: &Path,
        launch: &Launch<'_>,
    ) -> anyhow::Result<Self> {
        let socket = workdir.join("palisade.sock");
        let log = workdir.join("palisaded.log");
        let (config, pin_path) = derived_config(config, workdir, launch.failsafe)?;
        let mut command: Vec<std::ffi::OsString> = launch.wrapper.iter().map(Into::into).collect();
        command.push(binary("palisaded")?.into());
        command.extend([
            "--config".into(),
            config.clone().into_os_string(),
            "--policy-dir".into(),
            policy_dir.as_os_str().to_owned(),
            "--socket".into(),
            socket.as_os_str().to_owned(),
        ]);
        let env: Vec<(String, String)> = launch
            .env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let process = spawn_daemon(netns.name(), &command, &env, &log)?;
        let mut daemon = Self {
            process,
            command,
            netns: netns.name().to_owned(),
            env,
            socket,
            log,
            pin_path,
            config,
        };
        daemon.wait_until_up()?;
        Ok(daemon)
    }

    fn wait_until_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if self
                .ctl(&["status"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return self.check_attach();
            }
            if self.process.has_exited() || Instant::now() > deadline {
                bail!("palisaded did not come up; its log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// That every enforced interface is attached the way the config's
    /// `datapath.attach` asks: a suite run for one attach path (see
    /// [`ATTACH_OVERRIDE`]) must not pass on the other.
    fn check_attach(&self) -> anyhow::Result<()> {
        let want = match read_config(&self.config)?.datapath.attach {
            palisade_config::TcAttachConfig::Auto => return Ok(()),
            palisade_config::TcAttachConfig::Tcx => "tcx",
            palisade_config::TcAttachConfig::Tc => "tc",
        };
        for interface in self.status()?.interfaces {
            if interface.state == palisade_api::InterfaceState::Enforcing
                && !interface.hooks.starts_with(&format!("{want} "))
            {
                bail!(
                    "datapath.attach = {want:?} but {} is attached as {:?}",
                    interface.name,
                    interface.hooks
                );
            }
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL (no cleanup of any kind runs), then
    /// starts it again with the same arguments and waits until it answers.
    ///
    /// # Errors
    ///
    /// When the new process does not come up.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.restart()
    }

    /// Kills the daemon with SIGKILL: no cleanup of any kind runs.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the daemon again with the same arguments (after [`Daemon::kill`])
    /// and waits until it answers.
    ///
    /// # Errors
    ///
    /// When the new process does not come up.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        self.process = spawn_daemon(&self.netns, &self.command, &self.env, &self.log)?;
        self.wait_until_up()
    }

    /// The bpffs directory this daemon pins its programs and state under.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// palisaded on the example config and policy directory, as shipped in
    /// etc/ (failsafe services emptied, see [`Launch`]), enforcing on the
    /// node's eth0 of `topology`.
    ///
    /// # Panics
    ///
    /// When it does not come up.
    pub fn start_example(topology: &Topology, workdir: &TempDir) -> Self {
        Self::start(
            &topology.node,
            &repo().join("etc/palisade.toml"),
            &repo().join("etc/policies.d"),
            workdir.path(),
        )
        .expect("palisaded starts")
    }

    /// Waits up to `limit` for `done`, panicking with `what` and the
    /// daemon's log when it does not come.
    ///
    /// # Panics
    ///
    /// When `done` is still false after `limit`.
    pub fn wait_until(&self, limit: Duration, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {limit:?}; palisaded's log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes the daemon's configuration file (its own copy) with `edit`,
    /// as an operator edits palisade.toml before a reload.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, parsed or written.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Config)) -> anyhow::Result<()> {
        let mut config = read_config(&self.config)?;
        edit(&mut config);
        write_config(&self.config, &config)
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Runs `palisadectl --socket SOCKET ARGS...` and returns its output.
    ///
    /// # Errors
    ///
    /// When palisadectl cannot be started.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(binary("palisadectl")?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running palisadectl")
    }

    /// Runs `palisadectl --socket SOCKET ARGS...` as user `uid`, group `gid`
    /// with supplementary `groups` (through `setpriv`).
    ///
    /// # Errors
    ///
    /// When setpriv or palisadectl cannot be started.
    pub fn ctl_as(
        &self,
        uid: u32,
        gid: u32,
        groups: &[u32],
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"));
        if groups.is_empty() {
            command.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(ToString::to_string).collect();
            command.arg(format!("--groups={}", list.join(",")));
        }
        command
            .arg(binary("palisadectl")?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running palisadectl through setpriv")
    }

    /// Sends SIGHUP (reload) to the daemon.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn hang_up(&self) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid())?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .context("sending SIGHUP")
    }

    /// Flows from `palisadectl observe -o json FILTERS...`.
    ///
    /// # Errors
    ///
    /// When palisadectl fails (its stderr is in the error) or prints
    /// something other than one JSON flow per line.
    pub fn flows(&self, filters: &[&str]) -> anyhow::Result<Vec<palisade_api::Flow>> {
        let mut args = vec!["observe", "-o", "json"];
        args.extend_from_slice(filters);
        let output = self.ctl(&args)?;
        if !output.status.success() {
            bail!(
                "observe {filters:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).context("one JSON flow per line"))
            .collect()
    }

    /// The flows once `wanted` holds for them, or after 5 s whatever they are.
    ///
    /// # Errors
    ///
    /// As [`Daemon::flows`].
    pub fn flows_until(
        &self,
        wanted: impl Fn(&[palisade_api::Flow]) -> bool,
    ) -> anyhow::Result<Vec<palisade_api::Flow>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let flows = self.flows(&[])?;
            if wanted(&flows) || Instant::now() > deadline {
                return Ok(flows);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `palisadectl status -o json`.
    ///
    /// # Errors
    ///
    /// When palisadectl fails or prints no status.
    pub fn status(&self) -> anyhow::Result<palisade_api::Status> {
        let output = self.ctl(&["status", "-o", "json"])?;
        if !output.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        serde_json::from_slice(&output.stdout).context("status JSON")
    }

    /// Runs `palisaded --cleanup` with this daemon's config, in its network
    /// namespace (as an operator or a package's removal would on the node).
    ///
    /// # Errors
    ///
    /// When palisaded cannot be run.
    pub fn cleanup(&self) -> anyhow::Result<std::process::Output> {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(binary("palisaded")?)
            .arg("--config")
            .arg(&self.config)
            .arg("--cleanup")
            .output()
            .context("running palisaded --cleanup")
    }

    /// Stops the daemon (SIGTERM, then SIGKILL). Its pinned programs stay.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.process.stop();
        // Detaches the programs and drops the connection state.
        let _ = std::fs::remove_dir_all(&self.pin_path);
    }
}

/// Starts `command` (program and arguments) inside `netns`, logging to `log`.
/// Only the network namespace is entered (not `ip netns exec`, which also
/// remounts /sys): the daemon sees the host's bpffs at /sys/fs/bpf, as under
/// systemd, so what it pins outlives it.
fn spawn_daemon(
    netns: &str,
    command: &[std::ffi::OsString],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<ChildGuard> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .args(command)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting palisaded")?;
    Ok(ChildGuard::new(child))
}

/// Runs palisaded with `args` inside `netns` (its network namespace only,
/// so pins go to the host's bpffs), expecting it to stop by itself within
/// 20 s (a start it refuses); returns whether it succeeded and what it
/// logged.
///
/// # Panics
///
/// When it cannot be started or keeps running.
pub fn palisaded_until_it_stops(netns: &Netns, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", netns.name()))
        .arg("--")
        .arg(binary("palisaded").expect("palisaded"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palisaded runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("palisaded kept running: {args:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    (status.success(), log)
}

/// A host policy (TOML) named `name` that allows everything from `cidr`.
pub fn allow_from_policy(name: &str, cidr: &str) -> String {
    format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\" }}\n[spec]\nnodeSelector = {{}}\n[[spec.ingress]]\nfromCIDR = [\"{cidr}\"]\n"
    )
}
