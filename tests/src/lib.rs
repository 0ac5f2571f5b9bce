//! Network-namespace test hosts for palisade's end-to-end tests and demo.
//!
//! Everything here creates its own namespaces and veth pairs and removes them
//! when dropped, also when a test panics: nothing touches the machine's own
//! interfaces, and traffic only flows between namespaces we made.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Socket, Type};

pub mod frames;
pub mod mesh;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for `ip netns`.
fn unique(role: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("pal{}-{id}-{role}", std::process::id())
}

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

/// `GET path` over HTTP/1.0 to `address` from inside `netns`: the whole
/// response, head and body.
///
/// # Errors
///
/// When the namespace cannot be entered or the request fails.
pub fn http_get(netns: &Netns, address: &str, path: &str) -> anyhow::Result<String> {
    let (address, request) = (
        address.to_owned(),
        format!("GET {path} HTTP/1.0\r\nHost: palisade\r\n\r\n"),
    );
    netns
        .spawn(move || -> anyhow::Result<String> {
            let mut stream = std::net::TcpStream::connect(&address)
                .with_context(|| format!("connecting to {address}"))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })?
        .join()
        .map_err(|_| anyhow!("the request thread panicked"))?
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

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after `role`, with loopback up.
    ///
    /// # Errors
    ///
    /// When `ip netns add` fails.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = unique(role);
        ip(&["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`.
    ///
    /// # Errors
    ///
    /// When the command fails.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Joins this namespace to `peer` by a veth pair named `eth0` on both
    /// sides. Created inside this namespace with its peer inside the other:
    /// the veth never exists in the root namespace.
    ///
    /// # Errors
    ///
    /// When `ip link add` fails.
    pub fn add_veth_to(&self, peer: &Netns) -> anyhow::Result<()> {
        self.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ])?;
        Ok(())
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread that has entered this namespace.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<JoinHandle<T>> {
        let file = File::open(Path::new("/run/netns").join(&self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        // The thread enters the namespace before running f; only that thread moves.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            let entered = setns(&file, CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = entered_tx.send(entered);
            assert!(ok, "setns failed");
            f()
        });
        entered_rx
            .recv()
            .context("namespace thread died")?
            .with_context(|| format!("entering namespace {}", self.name))?;
        Ok(handle)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete namespace {}: {error:#}",
                self.name
            );
        }
    }
}

/// Whether a namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The workspace root (where `etc/` is).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A test's literal address.
///
/// # Panics
///
/// When `text` is not an IP address (a bug in the test).
pub fn address(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// Two namespaces joined by a veth pair: a `node` (the firewall's host) and a
/// `client` with one address inside and one outside the example bastion
/// network. Both ends are called `eth0`, as in the example config.
#[derive(Debug)]
pub struct Topology {
    /// Where palisaded runs.
    pub node: Netns,
    /// Where traffic comes from.
    pub client: Netns,
}

impl Topology {
    /// The node's address.
    pub const NODE: &'static str = "10.200.0.1";
    /// A client address inside the example policy's bastion network 10.200.0.8/29.
    pub const BASTION: &'static str = "10.200.0.10";
    /// A client address outside the bastion network.
    pub const OUTSIDER: &'static str = "10.200.0.100";

    /// Port `port` on the node's address.
    pub fn node_port(port: u16) -> SocketAddr {
        SocketAddr::new(address(Self::NODE), port)
    }

    /// Creates both namespaces and the veth pair between them.
    ///
    /// # Errors
    ///
    /// When any `ip` command fails (everything made so far is removed).
    pub fn new() -> anyhow::Result<Self> {
        let topology = Self {
            node: Netns::new("node")?,
            client: Netns::new("client")?,
        };
        topology.join()?;
        Ok(topology)
    }

    /// A TCP connection attempt from `source` (a client address) to the
    /// node's port 22, given 700 ms (long enough for a SYN-ACK on a veth;
    /// a dropped SYN waits that long).
    ///
    /// # Panics
    ///
    /// When the client namespace cannot be entered.
    pub fn ssh_from(&self, source: &str) -> Connect {
        tcp_connect(
            &self.client,
            address(source),
            Self::node_port(22),
            Duration::from_millis(700),
        )
        .expect("connect attempt")
    }

    /// Makes the veth pair between the namespaces with its addresses, up;
    /// again after `ip link del eth0` (a NIC reset, a veth re-created).
    ///
    /// # Errors
    ///
    /// When any `ip` command fails.
    pub fn join(&self) -> anyhow::Result<()> {
        self.node.add_veth_to(&self.client)?;
        self.node
            .ip(&["addr", "add", &format!("{}/24", Self::NODE), "dev", "eth0"])?;
        for address in [Self::BASTION, Self::OUTSIDER] {
            self.client
                .ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        }
        self.node.ip(&["link", "set", "eth0", "up"])?;
        self.client.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }
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
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut table: toml::Table = toml::from_str(&text)?;
    let pin_path = PathBuf::from(format!(
        "/sys/fs/bpf/palisade-e2e-{}-{}",
        std::process::id(),
        PIN_DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    let section = |table: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        match table.remove(name) {
            Some(toml::Value::Table(section)) => Ok(section),
            None => Ok(toml::Table::new()),
            Some(_) => bail!("[{name}] is not a table in {}", config.display()),
        }
    };
    let mut datapath = section(&mut table, "datapath")?;
    datapath.insert(
        "pin_path".into(),
        toml::Value::String(pin_path.display().to_string()),
    );
    table.insert("datapath".into(), toml::Value::Table(datapath));
    let mut policy = section(&mut table, "policy")?;
    policy.insert(
        "state_directory".into(),
        toml::Value::String(workdir.join("state").display().to_string()),
    );
    table.insert("policy".into(), toml::Value::Table(policy));
    if !failsafe {
        let mut lists = section(&mut table, "failsafe")?;
        lists.insert("inbound".into(), toml::Value::Array(Vec::new()));
        lists.insert("outbound".into(), toml::Value::Array(Vec::new()));
        table.insert("failsafe".into(), toml::Value::Table(lists));
    }
    let derived = workdir.join("palisade.toml");
    std::fs::write(&derived, toml::to_string(&table)?)?;
    Ok((derived, pin_path))
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

impl Daemon {
    /// Starts palisaded in `netns` with (a copy of) `config` and `policy_dir`,
    /// its socket and log in `workdir`, and waits until the socket answers.
    ///
    /// # Errors
    ///
    /// When it does not come up within 20 s (its log is in the error).
    pub fn start(
        netns: &Netns,
        config: &Path,
        policy_dir: &Path,
        workdir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(netns, config, policy_dir, workdir, &Launch::default())
    }

    /// [`Daemon::start`] with extra environment variables and a wrapper
    /// command (run inside the namespace, ending in `exec "$@"` or the like).
    ///
    /// # Errors
    ///
    /// When it does not come up within 20 s (its log is in the error).
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .ctl(&["status"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            if self.process.has_exited() || Instant::now() > deadline {
                bail!("palisaded did not come up; its log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
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
    pub fn edit_config(&self, edit: impl FnOnce(&mut toml::Table)) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let mut table: toml::Table = toml::from_str(&text)?;
        edit(&mut table);
        std::fs::write(&self.config, toml::to_string(&table)?)?;
        Ok(())
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

/// A thread inside a namespace that binds a socket, then serves it one step
/// at a time until dropped.
#[derive(Debug)]
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `bind` on a new thread inside `netns`, then `step` with what it
    /// bound until the returned value is dropped. Returns once `bind` has
    /// succeeded; its error (with `address`) otherwise.
    fn start<S: 'static>(
        netns: &Netns,
        address: SocketAddr,
        bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
        mut step: impl FnMut(&S) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            netns.spawn(move || {
                let bound = match bind() {
                    Ok(bound) => {
                        let _ = bound_tx.send(Ok(()));
                        bound
                    }
                    Err(error) => {
                        let _ = bound_tx.send(Err(error));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    step(&bound);
                }
            })?
        };
        bound_rx
            .recv()
            .context("server thread died")?
            .with_context(|| format!("binding {address}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A non-blocking TCP listener on `address` (bound in the calling thread's
/// namespace).
fn nonblocking_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A TCP listener inside a namespace that records who connected, stopped on drop.
#[derive(Debug)]
pub struct Listener {
    peers: Arc<Mutex<Vec<IpAddr>>>,
    _server: Background,
}

impl Listener {
    /// Listens on `address` inside `netns`.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or the address cannot be bound.
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<Self> {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&peers);
        let server = Background::start(
            netns,
            address,
            move || nonblocking_listener(address),
            move |listener: &TcpListener| match listener.accept() {
                Ok((_, peer)) => {
                    if let Ok(mut peers) = recorded.lock() {
                        peers.push(peer.ip());
                    }
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            },
        )?;
        Ok(Self {
            peers,
            _server: server,
        })
    }

    /// Addresses that connected so far.
    pub fn peers(&self) -> Vec<IpAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Outcome of a TCP connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// The handshake completed.
    Established,
    /// The peer answered with a reset (nothing listening).
    Refused,
    /// No answer within the timeout (dropped).
    TimedOut,
}

/// Connects from `source` (an address of `netns`) to `destination`.
///
/// # Errors
///
/// When the namespace cannot be entered or the socket cannot be set up.
pub fn tcp_connect(
    netns: &Netns,
    source: IpAddr,
    destination: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<Connect> {
    let attempt = netns.spawn(move || -> anyhow::Result<Connect> {
        let socket = Socket::new(Domain::for_address(destination), Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        Ok(match socket.connect_timeout(&destination.into(), timeout) {
            Ok(()) => Connect::Established,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => Connect::Refused,
            Err(error)
                if error.kind() == std::io::ErrorKind::TimedOut
                    || error.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Connect::TimedOut
            }
            Err(error) => return Err(error.into()),
        })
    })?;
    attempt
        .join()
        .map_err(|_| anyhow!("connect thread panicked"))?
}

/// Sends one UDP datagram from `source` (an address of `netns`) to `destination`.
///
/// # Errors
///
/// When the namespace cannot be entered or the datagram cannot be sent.
pub fn send_udp(netns: &Netns, source: IpAddr, destination: SocketAddr) -> anyhow::Result<()> {
    send_udp_sized(netns, source, destination, 8)
}

/// Sends one UDP datagram of `length` bytes from `source` (an address of
/// `netns`, any port) to `destination`; past the MTU the kernel fragments it.
///
/// # Errors
///
/// When the namespace cannot be entered or the datagram cannot be sent.
pub fn send_udp_sized(
    netns: &Netns,
    source: IpAddr,
    destination: SocketAddr,
    length: usize,
) -> anyhow::Result<()> {
    let sent = netns.spawn(move || -> anyhow::Result<()> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(source, 0))?;
        socket.send_to(&vec![b'p'; length], destination)?;
        Ok(())
    })?;
    sent.join().map_err(|_| anyhow!("send thread panicked"))?
}

/// A UDP socket inside a namespace that records the source and length of
/// every datagram it receives; stopped on drop.
#[derive(Debug)]
pub struct UdpSink {
    received: Arc<Mutex<Vec<(IpAddr, usize)>>>,
    _server: Background,
}

impl UdpSink {
    /// Binds `address` inside `netns`.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or the address cannot be bound.
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&received);
        let mut buffer = vec![0u8; 65536];
        let server = Background::start(
            netns,
            address,
            move || {
                let socket = std::net::UdpSocket::bind(address)?;
                socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(socket)
            },
            move |socket: &std::net::UdpSocket| {
                if let Ok((n, peer)) = socket.recv_from(&mut buffer)
                    && let Ok(mut received) = recorded.lock()
                {
                    received.push((peer.ip(), n));
                }
            },
        )?;
        Ok(Self {
            received,
            _server: server,
        })
    }

    /// Source and length of each datagram received so far.
    pub fn received(&self) -> Vec<(IpAddr, usize)> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` until `count` datagrams have arrived, and
    /// returns what arrived.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<(IpAddr, usize)> {
        let deadline = Instant::now() + timeout;
        while self.received().len() < count && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.received()
    }
}

/// A TCP server inside a namespace that echoes what each connection sends;
/// stopped on drop.
#[derive(Debug)]
pub struct EchoServer {
    _server: Background,
}

impl EchoServer {
    /// Listens on `address` inside `netns`.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or the address cannot be bound.
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<Self> {
        let server = Background::start(
            netns,
            address,
            move || nonblocking_listener(address),
            |listener: &TcpListener| match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    // Threads made here stay in this namespace.
                    thread::spawn(move || {
                        let mut buffer = [0u8; 4096];
                        while let Ok(n) = stream.read(&mut buffer) {
                            if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            },
        )?;
        Ok(Self { _server: server })
    }
}

/// Opens a TCP connection from `source` (an address of `netns`) to
/// `destination`; the stream can then be used from any thread.
///
/// # Errors
///
/// When the connection cannot be made within `timeout`.
pub fn tcp_stream(
    netns: &Netns,
    source: IpAddr,
    destination: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<std::net::TcpStream> {
    let attempt = netns.spawn(move || -> anyhow::Result<std::net::TcpStream> {
        let socket = Socket::new(Domain::for_address(destination), Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&destination.into(), timeout)?;
        let stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(timeout))?;
        Ok(stream)
    })?;
    attempt
        .join()
        .map_err(|_| anyhow!("connect thread panicked"))?
}

/// Sends `message` on `stream` and reads the echo back; false when no echo
/// comes within the stream's read timeout.
pub fn echoes(stream: &mut std::net::TcpStream, message: &[u8]) -> bool {
    if stream.write_all(message).is_err() {
        return false;
    }
    let mut echo = vec![0u8; message.len()];
    stream.read_exact(&mut echo).is_ok() && echo == message
}

/// Sends an ICMP message of `icmp_type` (echo request 8 or timestamp request
/// 13) from `source` to `destination` and says whether the matching reply
/// (0 or 14) came back within `timeout`.
///
/// # Errors
///
/// When the namespace cannot be entered or the packet cannot be sent.
pub fn icmp_answered(
    netns: &Netns,
    source: std::net::Ipv4Addr,
    destination: std::net::Ipv4Addr,
    icmp_type: u8,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let reply_type = match icmp_type {
        8 => 0,
        13 => 14,
        other => bail!("no reply is defined for ICMP type {other}"),
    };
    let exchange = netns.spawn(move || -> anyhow::Result<bool> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::ICMPV4))?;
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        let mut message = vec![icmp_type, 0, 0, 0, 0x51, 0x7e, 0, 1];
        if icmp_type == 13 {
            message.extend_from_slice(&[0u8; 12]);
        } else {
            message.extend_from_slice(b"palisade");
        }
        let checksum = internet_checksum(&message);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
        socket.send_to(
            &message,
            &SocketAddr::new(IpAddr::V4(destination), 0).into(),
        )?;
        let std_socket: std::net::UdpSocket = socket.into();
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            std_socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let Ok(n) = std_socket.recv(&mut buffer) else {
                break;
            };
            // Raw sockets receive the IPv4 header too.
            let header = usize::from(buffer[0] & 0x0f) * 4;
            let from = std::net::Ipv4Addr::new(buffer[12], buffer[13], buffer[14], buffer[15]);
            if n > header + 6
                && from == destination
                && buffer[header] == reply_type
                && buffer[header + 4..header + 6] == [0x51, 0x7e]
            {
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    exchange
        .join()
        .map_err(|_| anyhow!("ICMP thread panicked"))?
}

/// Sends one ICMP echo request from `source` (an IPv4 address of `netns`) to
/// `destination`, over a raw socket.
///
/// # Errors
///
/// When the namespace cannot be entered or the packet cannot be sent.
pub fn send_icmp_echo(
    netns: &Netns,
    source: std::net::Ipv4Addr,
    destination: std::net::Ipv4Addr,
) -> anyhow::Result<()> {
    let sent = netns.spawn(move || -> anyhow::Result<()> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::ICMPV4))?;
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        let mut echo = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'a', b'l', b'i'];
        let checksum = internet_checksum(&echo);
        echo[2..4].copy_from_slice(&checksum.to_be_bytes());
        socket.send_to(&echo, &SocketAddr::new(IpAddr::V4(destination), 0).into())?;
        Ok(())
    })?;
    sent.join().map_err(|_| anyhow!("send thread panicked"))?
}

/// Sends `frame` (a whole Ethernet frame) out of `interface` in `netns`
/// through a packet socket, as a host with a broken or hostile stack would.
///
/// # Errors
///
/// When the namespace cannot be entered or the socket refuses.
pub fn send_frame(netns: &Netns, interface: &str, frame: Vec<u8>) -> anyhow::Result<()> {
    let interface = std::ffi::CString::new(interface)?;
    let sent = netns.spawn(move || -> anyhow::Result<()> {
        // SAFETY: plain socket calls on a socket this closure owns; the
        // address and buffer outlive the calls.
        unsafe {
            let ifindex = libc::if_nametoindex(interface.as_ptr());
            if ifindex == 0 {
                bail!("no interface {interface:?}");
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let socket = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = u16::try_from(libc::AF_PACKET)?;
            address.sll_ifindex = i32::try_from(ifindex)?;
            address.sll_halen = 6;
            address.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>())?,
            );
            if sent < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        Ok(())
    })?;
    sent.join().map_err(|_| anyhow!("send thread panicked"))?
}

/// The MAC address of `interface` in `netns`.
///
/// # Errors
///
/// When `ip link show` fails or prints no address.
pub fn mac_address(netns: &Netns, interface: &str) -> anyhow::Result<[u8; 6]> {
    let text = netns.ip(&["link", "show", interface])?;
    let address = text
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no MAC address in {text}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(address.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// The RFC 1071 checksum of `bytes`.
pub(crate) fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Datagrams received on `socket` until `done` holds for them or `timeout`
/// passes (empty datagrams, such as a sender's connection probe, included).
pub fn datagrams_until(
    socket: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
    done: impl Fn(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 65536];
    while !done(&received) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let _ = socket.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        if let Ok(n) = socket.recv(&mut buffer) {
            received.push(buffer[..n].to_vec());
        }
    }
    received
}

/// A host policy (TOML) named `name` that allows everything from `cidr`.
pub fn allow_from_policy(name: &str, cidr: &str) -> String {
    format!(
        "kind = \"CiliumClusterwideNetworkPolicy\"\nmetadata = {{ name = \"{name}\" }}\n[spec]\nnodeSelector = {{}}\n[[spec.ingress]]\nfromCIDR = [\"{cidr}\"]\n"
    )
}
