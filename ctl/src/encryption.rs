//! `palisadectl encryption status`: how traffic to the other nodes is
//! encrypted, whatever the backend (as `cilium encrypt status`).

use clap::Subcommand;
use std::fmt::Write as _;

use palisade_api::{Client, EncryptionStatus, IpsecStatus};

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
    if let Some(ipsec) = &status.ipsec {
        out.push_str(&ipsec_text(ipsec));
    }
    out
}

/// The IPsec mesh as a table, as `cilium encrypt status` shows it.
fn ipsec_text(status: &IpsecStatus) -> String {
    let keys: Vec<String> = status.keys.iter().map(u8::to_string).collect();
    let mut out = format!(
        "IPsec mode: {}\nKeys installed (SPI): {}\nNewest key: {}\n",
        status.mode,
        keys.join(", "),
        status.newest_key
    );
    for node in &status.nodes {
        let _ = write!(
            out,
            "\nnode: {}\n  address: {}\n  outbound key: {}\n  states: {}/{}\n  policies: {}/{}\n  transfer: {} B sent, {} B received\n",
            node.name,
            node.address,
            node.outbound_key,
            node.states,
            node.states_expected,
            node.policies,
            node.policies_expected,
            node.tx_bytes,
            node.rx_bytes
        );
    }
    let errors: Vec<String> = status
        .xfrm_stats
        .iter()
        .filter(|(_, value)| **value != 0)
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    let _ = writeln!(
        out,
        "\nXFRM errors: {}",
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipsec_table_shows_keys_nodes_and_nonzero_errors() {
        let status = IpsecStatus {
            mode: "tunnel".to_owned(),
            keys: vec![3, 4],
            newest_key: 4,
            nodes: vec![palisade_api::IpsecNodeStatus {
                name: "node-2".to_owned(),
                address: "192.0.2.2".to_owned(),
                outbound_key: 3,
                states: 4,
                states_expected: 4,
                policies: 3,
                policies_expected: 3,
                tx_bytes: 10,
                rx_bytes: 20,
            }],
            xfrm_stats: [
                ("XfrmInNoStates".to_owned(), 2),
                ("XfrmInError".to_owned(), 0),
            ]
            .into_iter()
            .collect(),
        };
        let text = ipsec_text(&status);
        assert!(text.contains("Keys installed (SPI): 3, 4\n"), "{text}");
        assert!(
            text.contains("node: node-2\n  address: 192.0.2.2\n  outbound key: 3\n  states: 4/4\n"),
            "{text}"
        );
        assert!(text.contains("XFRM errors: XfrmInNoStates 2\n"), "{text}");
    }
}
