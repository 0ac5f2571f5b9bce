//! `palisadectl encryption status`: how traffic to the other nodes is
//! encrypted, whatever the backend (as `cilium encrypt status`).

use clap::Subcommand;
use palisade_api::{Client, EncryptionStatus};

use crate::output::{Format, print};

/// `palisadectl encryption ...`.
#[derive(Debug, Subcommand)]
pub enum EncryptionCommand {
    /// Show the encryption mode and the backend's state (`disabled` when
    /// traffic to the other nodes is not encrypted).
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Runs an `encryption` subcommand.
///
/// # Errors
///
/// When the daemon is unreachable or cannot read the backend.
pub async fn run(client: &Client, command: EncryptionCommand) -> anyhow::Result<()> {
    match command {
        EncryptionCommand::Status { output } => {
            let status = client.encryption().await?;
            print(output, &status, |status| print!("{}", text(status)))
        }
    }
}

fn text(status: &EncryptionStatus) -> String {
    let mut out = format!("Encryption: {}\n", status.mode);
    if let Some(wireguard) = &status.wireguard {
        out.push_str(&crate::wireguard::text(wireguard));
    }
    out
}
