//! palisaded: loads the eBPF datapath, installs the policies that select this
//! node, and serves the control socket.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use palisade_daemon::{
    authz::Authorizer,
    config::ConfigFile,
    conntrack_watch,
    control::{self, ControlState},
    datapath::{self, DatapathKind},
    encryption::Encryption,
    endpoints::EndpointRegistry,
    engine::{Engine, EngineSettings},
    flows::FlowHub,
    guard, logging,
    metrics::{self, Metrics},
    reload::{Overrides, Reloader, reconfiguration},
    serve::{self, ControlLimits},
    store::PolicyStore,
    systemd,
};
use tokio::{signal::unix::SignalKind, sync::Mutex};
use tracing::{error, info, warn};

/// What `palisaded --help` and its man page say after the options.
const AFTER_HELP: &str = "\
Signals:
  SIGHUP   re-read the configuration, the policy directory and the saved
           policies and put them in force together (what `systemctl reload
           palisade` sends); an invalid set, or a changed setting that needs
           a restart, is refused and everything in force stays
  SIGTERM  stop; the programs stay attached and keep enforcing (pinned)

Files:
  /etc/palisade/palisade.toml     the configuration
  /etc/palisade/policies.d/       policies read on start and on reload
  /var/lib/palisade/policies/     policies applied with palisadectl (they
                                  replace directory policies of the same name)
  /run/palisade/palisade.sock     the control socket (palisadectl)
  /sys/fs/bpf/palisade/           pinned programs and connection state";

/// palisade host firewall daemon: enforces host policies with eBPF.
#[derive(Debug, Parser)]
#[command(name = "palisaded", version, about, after_help = AFTER_HELP)]
struct Args {
    /// Configuration file [default: /etc/palisade/palisade.toml, whose
    /// absence means the built-in defaults]; a file named here must exist.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Control socket path (overrides `control.socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Policy directory (overrides `policy.directory`).
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Where applied policies are saved (overrides `policy.state_directory`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Detach every program and remove the pinned state under
    /// `datapath.pin_path`, and palisade's IPsec states and policies (no
    /// one else's), then exit. Enforcement and encryption stop.
    #[arg(long)]
    cleanup: bool,
    /// Probe what the kernel offers the eBPF programs, print it and exit:
    /// 0 when palisade can run here, 1 when the kernel lacks something, 2
    /// when it cannot tell (probing needs CAP_BPF).
    #[arg(long)]
    check_kernel: bool,
    /// Print palisaded's man page (roff, section 8) and exit.
    #[arg(long, hide = true)]
    man_page: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.man_page {
        let page = clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).section("8");
        return match page.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: writing the man page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check_kernel {
        let support = datapath::ebpf::kernel_probe::KernelSupport::probe();
        println!("{support}");
        return match (support.check(), support.fully_probed()) {
            (Err(_), _) => ExitCode::FAILURE,
            (Ok(()), true) => ExitCode::SUCCESS,
            (Ok(()), false) => ExitCode::from(2),
        };
    }
    logging::init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    raise_file_limit();
    limit_malloc_arenas();
    let config_file = ConfigFile::new(args.config);
    let mut config = config_file.load()?;
    let overrides = Overrides {
        socket: args.socket,
        policy_dir: args.policy_dir,
        state_dir: args.state_dir,
    };
    overrides.apply(&mut config);
    if let Some(conflict) = config.conflicts().into_iter().next() {
        anyhow::bail!("{}: {conflict}", config_file.path().display());
    }
    if args.cleanup {
        let pin_path = &config.datapath.pin_path;
        if datapath::cleanup(DatapathKind::Ebpf, pin_path)? {
            info!(path = %pin_path.display(), "removed palisade's programs and state: nothing is enforced");
        } else {
            info!(path = %pin_path.display(), "nothing pinned: nothing to clean up");
        }
        // IPsec states and policies a killed palisaded left: palisade's only
        // (its request id), whatever encryption.mode says now.
        match palisade_daemon::encryption::ipsec::remove_all() {
            Ok(0) => {}
            Ok(removed) => info!(removed, "removed palisade's IPsec states and policies"),
            Err(error)
                if config.encryption.mode == palisade_daemon::config::EncryptionMode::Ipsec =>
            {
                return Err(error.context("removing palisade's IPsec states and policies"));
            }
            Err(error) => warn!(
                error = format!("{error:#}"),
                "could not look for IPsec states to remove"
            ),
        }
        return Ok(());
    }
    Encryption::preflight(&config)?;
    let node_name = config.node.name.clone().unwrap_or_else(host_name);
    let reconfigured = reconfiguration(&config);
    let settings = EngineSettings {
        node: reconfigured.node,
        node_name: node_name.clone(),
        directory: config.policy.directory.clone(),
        store: PolicyStore::new(&config.policy.state_directory),
        failsafe: reconfigured.failsafe,
        enforcement: reconfigured.enforcement,
    };

    // A start that fails after this leaves nothing pinned it made itself
    // (the connection tables alone are ~95 MB of kernel memory); what an
    // earlier run pinned, and is perhaps enforcing, stays.
    let mut fresh_pins = FreshPins::new(&config.datapath.pin_path);
    let hub = Arc::new(FlowHub::new(
        node_name,
        config.flows.buffer,
        config.flows.log_per_second,
    ));
    let datapath = datapath::open(DatapathKind::Ebpf, &config, Arc::clone(&hub) as _)?;
    let mut engine = Engine::new(settings, datapath, Arc::clone(&hub));
    let first = engine.reload().with_context(|| {
        format!(
            "loading policies from {} and {}",
            config.policy.directory.display(),
            config.policy.state_directory.display()
        )
    })?;
    info!(
        policy = first.policies.join(","),
        rules = first.rules,
        directory = %config.policy.directory.display(),
        "initial policies installed"
    );
    engine.attach(&config.datapath)?;
    let encryption = Encryption::start(&config)?.map(Arc::new);

    let authorizer = Authorizer::new(&config.control);
    for group in authorizer.missing_groups() {
        warn!(
            group,
            "control group does not exist: its members cannot be recognised"
        );
    }
    let listener = control::bind(&config.control.socket, authorizer.socket_group())?;
    let summary = engine.summary();
    let engine = Arc::new(Mutex::new(engine));
    let metrics = Arc::new(Metrics::new());
    if let Some(listen) = config.metrics.listen {
        metrics::serve(
            listen,
            Arc::clone(&engine),
            Arc::clone(&metrics),
            encryption.clone(),
        )
        .await?;
    }
    let (endpoints, gone) = EndpointRegistry::load(&config.policy.state_directory)
        .context("loading the endpoint registry")?;
    for endpoint in &gone {
        info!(
            container_id = endpoint.registration.key.container_id,
            interface = endpoint.registration.key.interface,
            host_interface = endpoint.registration.host_interface,
            "forgetting an endpoint whose host interface is gone"
        );
    }
    if !gone.is_empty() {
        endpoints.save().context("saving the endpoint registry")?;
    }
    info!(
        endpoints = endpoints.list().endpoints.len(),
        "endpoints re-adopted"
    );
    let socket = config.control.socket.clone();
    let reloader = Arc::new(std::sync::Mutex::new(Reloader::new(
        config_file,
        overrides,
        config,
    )));
    let state = ControlState {
        engine: Arc::clone(&engine),
        hub,
        metrics,
        authorizer: Arc::new(authorizer),
        encryption: encryption.clone(),
        reloader: Arc::clone(&reloader),
        connections: Arc::new(std::sync::Mutex::new(
            engine
                .lock()
                .await
                .connection_tables()
                .context("opening the connection tables")?,
        )),
        endpoints: Arc::new(std::sync::Mutex::new(endpoints)),
    };
    systemd::spawn_watchdog(Arc::clone(&engine));
    guard::spawn(Arc::clone(&engine)).context("starting the enforcement guard")?;
    conntrack_watch::spawn(Arc::clone(&engine))
        .await
        .context("watching the connection tables")?;
    spawn_reload_on_hangup(engine, state.encryption.clone(), reloader)?;
    fresh_pins.keep();
    info!(socket = %socket.display(), "palisaded ready");
    systemd::ready(&summary);
    let served = serve::control(
        listener,
        control::router(state),
        ControlLimits::default(),
        shutdown_signal(encryption),
    )
    .await;
    systemd::stopping();
    // Best effort: a stale socket is replaced on the next start anyway.
    let _ = std::fs::remove_file(&socket);
    served.context("serving the control socket")?;
    info!("palisaded stopped");
    Ok(())
}

async fn shutdown_signal(encryption: Option<Arc<Encryption>>) {
    let encryption_stopped = async {
        match &encryption {
            Some(encryption) => encryption.stopped().await,
            None => std::future::pending().await,
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                error!(%e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        () = encryption_stopped => info!("the encryption backend stopped: stopping"),
    }
}

/// Reloads the configuration and the policies on each SIGHUP (`systemctl
/// reload palisade`), as `palisadectl reload` does.
fn spawn_reload_on_hangup(
    engine: Arc<Mutex<Engine>>,
    encryption: Option<Arc<Encryption>>,
    reloader: Arc<std::sync::Mutex<Reloader>>,
) -> anyhow::Result<()> {
    let mut hangups =
        tokio::signal::unix::signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            systemd::reloading();
            let (reloader, encryption) = (Arc::clone(&reloader), encryption.clone());
            let Ok((engine, result)) = control::with_engine_blocking(&engine, move |engine| {
                control::reload_configuration(&reloader, engine, encryption.as_deref())
            })
            .await
            else {
                // It panicked (and said so); tell systemd the reload is over.
                systemd::ready(&engine.lock().await.summary());
                continue;
            };
            match result {
                Ok(response) => info!(
                    generation = response.generation,
                    policy = response.policies.join(","),
                    "SIGHUP: configuration and policies reloaded"
                ),
                Err(e) => error!("SIGHUP: reload refused, everything in force is unchanged: {e}"),
            }
            systemd::ready(&engine.summary());
        }
    });
    Ok(())
}

/// The pin directory of a start that has not finished: removed on drop
/// unless it held something before the start or [`FreshPins::keep`] was
/// called.
struct FreshPins {
    path: Option<PathBuf>,
}

impl FreshPins {
    fn new(path: &std::path::Path) -> Self {
        Self {
            path: (!datapath::has_state(DatapathKind::Ebpf, path)).then(|| path.to_owned()),
        }
    }

    fn keep(&mut self) {
        self.path = None;
    }
}

impl Drop for FreshPins {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            match datapath::cleanup(DatapathKind::Ebpf, path) {
                Ok(true) => {
                    info!(path = %path.display(), "the start failed: removed what it had pinned")
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(path = %path.display(), "the start failed and its pins could not be removed: {e:#}")
                }
            }
        }
    }
}

/// glibc gives each thread that meets contention an allocation arena of its
/// own and keeps what they freed: with requests parsed and listed on
/// blocking threads, memory would grow by arenas, not by need. Two arenas
/// keep palisaded's size close to what it uses. A fixed mmap threshold
/// keeps large buffers (a connection-table listing, a big policy body) in
/// mappings returned to the kernel when freed: glibc's default threshold
/// rises to the largest buffer freed, after which such buffers stay in the
/// heap and palisaded keeps its peak size (70 to 105 MB under the hostile
/// test's attacks, by which round was sampled).
fn limit_malloc_arenas() {
    // SAFETY: mallopt changes allocator tuning only.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Raises the soft limit on open files to the hard one (`LimitNOFILE=` in
/// the unit sets both): connections are limited per listener, and the
/// descriptors must never run out first.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the struct only.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                warn!(
                    "cannot raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
