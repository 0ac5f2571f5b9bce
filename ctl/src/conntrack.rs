//! `palisadectl ct list|flush`.

use std::net::SocketAddr;

use clap::Subcommand;
use palisade_api::{CONNTRACK_DEFAULT_LIMIT, Client, ConntrackEntry};

use crate::output::{Format, columns, print};

/// `palisadectl ct ...`.
#[derive(Debug, Subcommand)]
pub enum ConntrackCommand {
    /// List the tracked connections.
    List {
        /// Show at most this many connections (the daemon gives 50,000 at
        /// most per request); the total is always shown.
        #[arg(long, default_value_t = CONNTRACK_DEFAULT_LIMIT)]
        limit: usize,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Forget every tracked connection: their next packets are judged by the
    /// rules as new connections (and dropped if the rules no longer allow them).
    Flush,
}

/// Runs a `ct` subcommand.
///
/// # Errors
///
/// When the daemon is unreachable or refuses.
pub async fn run(client: &Client, command: ConntrackCommand) -> anyhow::Result<()> {
    match command {
        ConntrackCommand::List { limit, output } => {
            let list = client.conntrack(limit).await?;
            print(output, &list, |list| {
                print!("{}", table(&list.entries));
                if list.truncated {
                    println!(
                        "({} of {} tracked connections shown; --limit shows more)",
                        list.entries.len(),
                        list.total
                    );
                }
            })
        }
        ConntrackCommand::Flush => {
            let flushed = client.flush_conntrack().await?;
            println!("flushed {} tracked connections", flushed.removed);
            Ok(())
        }
    }
}

fn table(entries: &[ConntrackEntry]) -> String {
    let mut rows = vec![
        [
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "DIRECTION",
            "STATE",
            "EXPIRES",
            "OPENED BY",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for entry in entries {
        rows.push(vec![
            entry.protocol.clone(),
            SocketAddr::new(entry.source, entry.source_port).to_string(),
            SocketAddr::new(entry.destination, entry.destination_port).to_string(),
            entry.direction.to_string(),
            entry.state.as_str().to_owned(),
            format!("{}s", entry.expires_in_seconds),
            entry.opened_by.clone(),
        ]);
    }
    columns(&rows)
}
