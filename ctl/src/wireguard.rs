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
    /// Switch the tunnel to a new key pair and print its public key (also
    /// written beside the private key file). Without a staged key the other
    /// nodes cannot reach this one until their `[[nodes]]` have the new key
    /// and they are reloaded; to rotate without that gap, run it with
    /// `--stage` first.
    RotateKey {
        /// Only make the next key pair and print its public key (also in
        /// `wireguard.pub.next`); the tunnel keeps its key. Put it as
        /// `next_public_key` in the other nodes' `[[nodes]]` entry for this
        /// node and reload them, then run `rotate-key` again: they switch
        /// at the new key's first handshake.
        #[arg(long)]
        stage: bool,
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
        WireGuardCommand::RotateKey { stage, output } => {
            let rotated = client.rotate_wireguard_key(stage).await?;
            print(output, &rotated, |rotated| {
                if rotated.staged {
                    println!(
                        "next public key: {}\nput it as next_public_key in the other nodes' [[nodes]] entry for this node, reload them, then run `palisadectl wireguard rotate-key`",
                        rotated.public_key
                    );
                } else {
                    println!("new public key: {}", rotated.public_key);
                }
            })
        }
    }
}

/// The `wg show` layout.
pub fn text(status: &WireGuardStatus) -> String {
    let mut out = format!(
        "interface: {}\n  backend: {} ({})\n  public key: {}\n",
        status.interface, status.backend, status.backend_reason, status.public_key,
    );
    if let Some(staged) = &status.staged_public_key {
        out.push_str(&format!("  staged public key: {staged}\n"));
    }
    out.push_str(&format!("  listening port: {}\n", status.listen_port));
    for peer in &status.peers {
        let handshake = peer.latest_handshake_seconds_ago.map_or_else(
            || "none yet".to_owned(),
            |seconds| format!("{seconds} seconds ago"),
        );
        let next = peer
            .next_public_key
            .as_ref()
            .map_or_else(String::new, |next| {
                format!("  next public key: {next} (no handshake yet)\n")
            });
        out.push_str(&format!(
            "\nnode: {}\n  public key: {}\n{next}  endpoint: {}\n  allowed ips: {}\n  latest handshake: {handshake}\n  transfer: {} B received, {} B sent\n",
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
