//! Logging: structured fields in the journal under systemd, readable lines on
//! stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM` when it connects our stderr to the journal;
//! then events go to journald natively, each field as `PALISADE_<NAME>`
//! (`PALISADE_GENERATION`, `PALISADE_VERDICT`, `PALISADE_SRC`, ...), so
//! `journalctl -u palisade PALISADE_VERDICT=DROPPED` works.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Prefix of palisade's journal fields.
const FIELD_PREFIX: &str = "PALISADE";

/// Installs the global subscriber. `RUST_LOG` overrides the `info` default.
pub fn init() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| {
        tracing_journald::layer()
            .map_err(|error| eprintln!("journald unavailable ({error}); logging to stderr"))
            .ok()
    });
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter())
            .with(
                layer
                    .with_field_prefix(Some(FIELD_PREFIX.to_owned()))
                    .with_syslog_identifier("palisaded".to_owned()),
            )
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
}
