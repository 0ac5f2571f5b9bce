//! palisadectl: drives palisaded over its control socket.

mod conntrack;
mod docs;
mod encryption;
mod endpoints;
mod explain;
mod files;
mod observe;
mod output;
mod policies;
mod status;
mod wireguard;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use palisade_api::{ClientError, DEFAULT_SOCKET};

use crate::{
    conntrack::ConntrackCommand, docs::DocsArgs, observe::ObserveArgs, output::Format,
    policies::PolicyCommand,
};

/// Exit status for any failure not listed below (daemon unreachable, I/O error).
const EXIT_FAILED: u8 = 1;
/// Exit status when the daemon refused the request or a file is invalid.
const EXIT_REFUSED: u8 = 3;
/// Exit status when the caller may not do what it asked.
const EXIT_NOT_PERMITTED: u8 = 4;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  failure (palisaded unreachable, a file unreadable, ...)
  2  usage error
  3  refused: an invalid policy, a name not in force, an apply waiting for
     confirmation, ...; nothing was changed
  4  not permitted: needs root or membership of the socket's group (reads)
     or of the admin group (changes)";

/// Control the palisade host firewall.
#[derive(Debug, Parser)]
#[command(name = "palisadectl", version, about, after_help = EXIT_CODES)]
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
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Add or replace policies (by name, and namespace for a
    /// CiliumNetworkPolicy), all or nothing.
    Apply(policies::ApplyArgs),
    /// Show what an apply of these files would change: rules added and
    /// removed, and recent flows that would get another verdict.
    Diff(policies::DiffArgs),
    /// Keep the rules of an `apply --confirm` before they roll back.
    Confirm,
    /// Re-read the configuration, the policy directory and the saved
    /// policies and put them in force together, as SIGHUP does; a changed
    /// setting that needs a restart is refused by name.
    Reload,
    /// List, show, delete, validate or explain policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show flows (verdicts on packets), like `hubble observe`.
    Observe(Box<ObserveArgs>),
    /// Show or flush the connection-tracking table.
    #[command(subcommand, name = "ct")]
    Conntrack(ConntrackCommand),
    /// List the pod endpoints palisade-cni registered.
    #[command(subcommand)]
    Endpoint(endpoints::EndpointCommand),
    /// Show how traffic to the other nodes is encrypted.
    #[command(subcommand)]
    Encryption(encryption::EncryptionCommand),
    /// Show the WireGuard node mesh, or rotate its key.
    #[command(subcommand)]
    Wireguard(wireguard::WireGuardCommand),
    /// Print a shell completion script.
    Completion(docs::CompletionArgs),
    /// Write the man pages into a directory.
    #[command(hide = true)]
    Man(DocsArgs),
}

/// The clap command, for completions and man pages.
fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Output piped into `head` and the like: when the reader goes away,
/// `print!` panics on the broken pipe; end quietly instead, with the status
/// a shell gives a command killed by SIGPIPE (128 + 13). SIGPIPE itself
/// stays ignored, so a socket the daemon closes is an error to report.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let client = palisade_api::Client::new(&cli.socket);
    match run(&client, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

/// A failure the command already printed, with the exit status to use.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
struct Reported(u8);

fn report(error: &anyhow::Error) -> ExitCode {
    if let Some(Reported(code)) = error.downcast_ref::<Reported>() {
        return ExitCode::from(*code);
    }
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Refused { status, body }) => {
            eprintln!("error: {}", body.error);
            for diagnostic in &body.diagnostics {
                eprintln!("  {diagnostic}");
            }
            if status.as_u16() == 403 {
                return ExitCode::from(EXIT_NOT_PERMITTED);
            }
            ExitCode::from(EXIT_REFUSED)
        }
        Some(ClientError::Connect { socket, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            eprintln!(
                "error: permission denied on {}: palisadectl needs root, or membership of the socket's group (`palisade` by default; see `[control]` in palisade.toml)",
                socket.display()
            );
            ExitCode::from(EXIT_NOT_PERMITTED)
        }
        _ => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn run(client: &palisade_api::Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { output } => status::run(client, output).await,
        Command::Apply(args) => policies::apply(client, &args).await,
        Command::Diff(args) => policies::diff(client, &args).await,
        Command::Confirm => policies::confirm(client).await,
        Command::Reload => policies::reload(client).await,
        Command::Policy(command) => policies::run(client, command).await,
        Command::Observe(args) => observe::run(client, &args).await,
        Command::Conntrack(command) => conntrack::run(client, command).await,
        Command::Endpoint(command) => endpoints::run(client, command).await,
        Command::Encryption(command) => encryption::run(client, command).await,
        Command::Wireguard(command) => wireguard::run(client, command).await,
        Command::Completion(args) => docs::completion(&args),
        Command::Man(args) => docs::man(&args),
    }
}
