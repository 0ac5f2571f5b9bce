//! The enforcement guard: keeps what status says true. On every rtnetlink
//! link event (an interface deleted, re-created, renamed) and once a second
//! it has the datapath check its attachments and pins against the kernel
//! ([`Engine::repair`]): an interface of a configured name that appears is
//! attached at once, one that vanished is reported (status, metric,
//! journal), pins removed under a running palisaded are put back. Each
//! finding goes to the journal at warning level.

use std::{sync::Arc, time::Duration};

use netlink_sys::{Socket, constants::NETLINK_ROUTE};
use tokio::sync::{Mutex, Notify};
use tracing::{error, warn};

use crate::{
    datapath::Repair,
    engine::{Engine, on_blocking_thread},
};

/// How often the attachments are checked without a link event (pins
/// removed make no event).
const CHECK_PERIOD: Duration = Duration::from_secs(1);
/// rtnetlink's multicast group of link changes (`RTNLGRP_LINK`).
const RTNLGRP_LINK: u32 = 1;

/// Starts the guard.
///
/// # Errors
///
/// When the rtnetlink socket cannot be opened or subscribed.
pub fn spawn(engine: Arc<Mutex<Engine>>) -> anyhow::Result<()> {
    let events = Arc::new(Notify::new());
    watch_links(Arc::clone(&events))?;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(CHECK_PERIOD);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = events.notified() => {}
            }
            // Re-attaching talks netlink: not on the executor.
            match on_blocking_thread(&engine, Engine::repair).await {
                Ok((_, repairs)) => repairs.iter().for_each(report),
                Err(error) => error!(%error, "checking the attachments failed unexpectedly"),
            }
        }
    });
    Ok(())
}

/// Wakes `events` on every rtnetlink link message, from a thread of its own
/// (the socket is blocking).
fn watch_links(events: Arc<Notify>) -> anyhow::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.add_membership(RTNLGRP_LINK)?;
    std::thread::Builder::new()
        .name("link-events".to_owned())
        .spawn(move || {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match socket.recv(&mut &mut buffer[..], 0) {
                    Ok(_) => events.notify_one(),
                    // ENOBUFS: events were lost; a check finds the state anyway.
                    Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                        events.notify_one();
                    }
                    Err(error) => {
                        error!(%error, "rtnetlink link events stopped; interfaces are still checked every second");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

fn report(repair: &Repair) {
    match repair {
        Repair::Vanished { interface } => warn!(
            interface,
            "enforced interface vanished: nothing is enforced on it until an interface of that name is back"
        ),
        Repair::Reattached {
            interface,
            previous_ifindex,
            ifindex,
        } => warn!(
            interface,
            previous_ifindex, ifindex, "interface is back: enforcing on it again"
        ),
        Repair::Repinned { interface } => warn!(
            interface,
            "the pins of this interface's programs were removed while palisaded ran (rm of the pin path, or palisaded --cleanup); the programs stayed attached and are pinned again"
        ),
        Repair::Restored { interface } => warn!(
            interface,
            "palisade's TC filter was deleted from this interface while palisaded ran (tc filter del, or the clsact qdisc removed); it is back"
        ),
        Repair::Failed { interface, error } => {
            error!(interface, error, "cannot mend the enforcement: see status")
        }
    }
}
