//! palisaded: loads the eBPF datapath, installs the policies that select this
//! node, and serves the control socket.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use palisade_daemon::{
    config::{Config, DEFAULT_CONFIG},
    control::{self, ControlState},
    datapath::{ebpf::EbpfDatapath, pinning},
    engine::{Engine, read_policy_directory},
    flows::{self, FlowHub},
    logging,
    metrics::{self, Metrics},
    systemd,
};
use palisade_policy::NodeContext;
use tokio::{signal::unix::SignalKind, sync::Mutex};
use tracing::{error, info};

/// palisade host firewall daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file; a missing file means the built-in defaults.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Control socket path (overrides `control.socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Policy directory (overrides `policy.directory`).
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Detach every program and remove the pinned state under
    /// `datapath.pin_path`, then exit. Enforcement stops.
    #[arg(long)]
    cleanup: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
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
    let mut config = Config::load(&args.config)?;
    if let Some(socket) = args.socket {
        config.control.socket = socket;
    }
    if let Some(directory) = args.policy_dir {
        config.policy.directory = directory;
    }
    if args.cleanup {
        let pin_path = &config.datapath.pin_path;
        if pinning::cleanup(pin_path)? {
            info!(path = %pin_path.display(), "removed palisade's programs and state: nothing is enforced");
        } else {
            info!(path = %pin_path.display(), "nothing pinned: nothing to clean up");
        }
        return Ok(());
    }
    let files = read_policy_directory(&config.policy.directory)?;
    let node_name = config.node.name.clone().unwrap_or_else(host_name);
    let node = NodeContext {
        labels: config.node.labels.clone(),
        audit_mode: config.policy.audit_mode,
    };

    let (datapath, flow_events) = EbpfDatapath::load(&config)?;
    let hub = Arc::new(FlowHub::new(
        node_name.clone(),
        config.flows.buffer,
        config.flows.log_per_second,
    ));
    let mut engine = Engine::new(node, node_name, Box::new(datapath), Arc::clone(&hub));
    let first = engine.apply(&files, false).with_context(|| {
        format!(
            "loading policies from {}",
            config.policy.directory.display()
        )
    })?;
    info!(
        policy = first.policies.join(","),
        rules = first.rules,
        directory = %config.policy.directory.display(),
        "initial policies installed"
    );
    engine.attach(&config.datapath)?;
    tokio::spawn(flows::read_events(flow_events, Arc::clone(&hub)));

    let listener = control::bind(&config.control.socket)?;
    let summary = engine.summary();
    let engine = Arc::new(Mutex::new(engine));
    let metrics = Arc::new(Metrics::new());
    if let Some(listen) = config.metrics.listen {
        metrics::serve(listen, Arc::clone(&engine), Arc::clone(&metrics)).await?;
    }
    let state = ControlState {
        engine: Arc::clone(&engine),
        hub,
        metrics,
    };
    systemd::spawn_watchdog(engine);
    info!(socket = %config.control.socket.display(), "palisaded ready");
    systemd::ready(&summary);
    let served = axum::serve(listener, control::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    systemd::stopping();
    // Best effort: a stale socket is replaced on the next start anyway.
    let _ = std::fs::remove_file(&config.control.socket);
    served.context("serving the control socket")?;
    info!("palisaded stopped");
    Ok(())
}

async fn shutdown_signal() {
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
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
