//! `palisadectl wireguard status|rotate-key`.

use clap::Subcommand;
use palisade_api::{Client, WireGuardStatus};

use crate::output::{Format, print};

/// `palisadectl wireguard ...`.
#[derive(Debug, Subcommand)]
pub enum WireGuardCommand {
    /// Show the tunnel like `wg show`: interface, backend, public key,
    /// listen port, and per node its endpoint, prefixes, latest handshake
    /// and transfer.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Make a new key pair and switch the tunnel to it. Prints the new
    /// public key (also written beside the private key file): put it in the
    /// other nodes' `[[nodes]]` and reload them.
    RotateKey {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Runs a `wireguard` subcommand.
///
/// # Errors
///
/// When the daemon is unreachable or refuses (encryption off).
pub async fn run(client: &Client, command: WireGuardCommand) -> anyhow::Result<()> {
    match command {
        WireGuardCommand::Status { output } => {
            let status = client.wireguard().await?;
            print(output, &status, |status| print!("{}", text(status)))
        }
        WireGuardCommand::RotateKey { output } => {
            let rotated = client.rotate_wireguard_key().await?;
            print(output, &rotated, |rotated| {
                println!("new public key: {}", rotated.public_key);
            })
        }
    }
}

/// The `wg show` layout.
fn text(status: &WireGuardStatus) -> String {
    let mut out = format!(
        "interface: {}\n  backend: {} ({})\n  public key: {}\n  listening port: {}\n",
        status.interface,
        status.backend,
        status.backend_reason,
        status.public_key,
        status.listen_port
    );
    for peer in &status.peers {
        let handshake = peer.latest_handshake_seconds_ago.map_or_else(
            || "none yet".to_owned(),
            |seconds| format!("{seconds} seconds ago"),
        );
        out.push_str(&format!(
            "\nnode: {}\n  public key: {}\n  endpoint: {}\n  allowed ips: {}\n  latest handshake: {handshake}\n  transfer: {} B received, {} B sent\n",
            peer.name,
            peer.public_key,
            peer.endpoint,
            peer.allowed_ips.join(", "),
            peer.rx_bytes,
            peer.tx_bytes
        ));
    }
    out
}
