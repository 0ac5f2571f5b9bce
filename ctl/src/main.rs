//! palisadectl: drives palisaded over its control socket.

mod observe;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use palisade_api::{ApplyRequest, Client, ClientError, DEFAULT_SOCKET, PolicyFile};

use crate::observe::ObserveArgs;

/// Exit status when the daemon refused the request (invalid policy, ...).
const EXIT_REFUSED: u8 = 3;
/// Exit status for any other failure (daemon unreachable, I/O error).
const EXIT_FAILED: u8 = 1;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  failure (palisaded unreachable, a file unreadable, ...)
  2  usage error
  3  palisaded refused the request (for example an invalid policy); nothing was changed";

/// Control the palisade host firewall.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Control socket of palisaded.
    #[arg(long, global = true, env = "PALISADE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what palisaded is enforcing.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = StatusFormat::Table)]
        output: StatusFormat,
    },
    /// Add or replace policies (by metadata.name), all or nothing.
    Apply {
        /// Policy files (TOML).
        #[arg(short, long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Validate and compile only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show flows (verdicts on packets), like `hubble observe`.
    Observe(Box<ObserveArgs>),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = Client::new(&cli.socket);
    match run(&client, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

fn report(error: &anyhow::Error) -> ExitCode {
    if let Some(ClientError::Refused { body, .. }) = error.downcast_ref::<ClientError>() {
        eprintln!("error: {}", body.error);
        for diagnostic in &body.diagnostics {
            eprintln!("  {diagnostic}");
        }
        return ExitCode::from(EXIT_REFUSED);
    }
    eprintln!("error: {error:#}");
    ExitCode::from(EXIT_FAILED)
}

async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { output } => status(client, output).await,
        Command::Apply { files, dry_run } => apply(client, files, dry_run).await,
        Command::Observe(args) => observe::run(client, &args).await,
    }
}

async fn status(client: &Client, output: StatusFormat) -> anyhow::Result<()> {
    let status = client.status().await?;
    match output {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        StatusFormat::Table => {
            println!("Node:           {}", status.node_name);
            println!("Version:        {}", status.version);
            println!("Datapath:       {}", status.datapath);
            if status.interfaces.is_empty() {
                println!("Interfaces:     none (nothing is enforced)");
            }
            for interface in &status.interfaces {
                println!(
                    "Interface:      {} (ifindex {}, XDP {})",
                    interface.name, interface.ifindex, interface.xdp_mode
                );
            }
            println!("Generation:     {}", status.generation);
            println!("Policies:       {}", status.policies.join(", "));
            println!("Rules:          {}", status.rules);
            println!(
                "Ingress:        {}{}",
                if status.ingress_default_deny {
                    "default deny"
                } else {
                    "default allow"
                },
                if status.audit_mode {
                    " (audit mode)"
                } else {
                    ""
                }
            );
            let c = &status.counters;
            println!(
                "Connections:    {} forwarded, {} dropped, {} audited; {} packets of tracked connections",
                c.forwarded(),
                c.dropped(),
                c.audited(),
                c.ingress.established.packets + c.egress.established.packets
            );
            println!(
                "Flow events:    {} lost, {} rate-limited",
                c.events_lost(),
                c.ingress.events_suppressed + c.egress.events_suppressed
            );
        }
    }
    Ok(())
}

async fn apply(client: &Client, paths: Vec<PathBuf>, dry_run: bool) -> anyhow::Result<()> {
    let files = paths
        .iter()
        .map(|path| {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(PolicyFile {
                name: path.display().to_string(),
                content,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let response = client.apply(&ApplyRequest { files, dry_run }).await?;
    if response.dry_run {
        println!(
            "dry run: valid; would apply {} ({} rules in force after); nothing was changed",
            response.applied.join(", "),
            response.rules
        );
    } else {
        println!(
            "applied {} (generation {}, {} rules in force)",
            response.applied.join(", "),
            response.generation,
            response.rules
        );
    }
    Ok(())
}
