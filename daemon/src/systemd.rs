//! systemd integration (sd_notify(3)): readiness, a one-line status, and the
//! watchdog. Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::engine::Engine;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        debug!(%error, "sd_notify failed");
    }
}

/// READY=1 with a status line. Send only once the datapath enforces the first
/// policy set and the control socket accepts requests.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=, shown by `systemctl status palisade`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// RELOADING=1 with MONOTONIC_USEC= (which systemd requires beside it),
/// before a reload; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// STOPPING=1.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// When systemd asked for a watchdog (`WatchdogSec=`), pings it at half the
/// interval. Each ping first takes the engine lock, so a wedged engine (the
/// loop that applies policies) stops the pings and systemd restarts us.
pub fn spawn_watchdog(engine: Arc<Mutex<Engine>>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = timeout / 2;
    info!(?timeout, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            drop(engine.lock().await);
            notify(&[NotifyState::Watchdog]);
        }
    });
}
