//! Watches how full the connection-tracking tables are. The tables are
//! LRU maps: when one is full the kernel evicts the least recently used
//! entry to make room for a new connection, silently (an idle established
//! connection then loses its entry and its next packet is judged as a new
//! connection), and it starts doing so a little before the capacity, as
//! it keeps free entries aside for each CPU ([`TableFill::evicting_from`]).
//! So the fill is counted every few seconds (less often when a walk of the
//! tables takes long), off the engine, shown in
//! status and metrics, and a table at 90 % of where eviction starts is
//! reported in the journal at warning level (again after it fell below
//! 80 %).

use std::{sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::{datapath::TableFill, engine::Engine};

/// How often the tables are counted at most.
const COUNT_PERIOD: Duration = Duration::from_secs(2);
/// A count (a walk of every entry, one syscall each) takes at most one
/// part in this many of a core: a large, full table is counted less often.
const COUNT_DUTY: u32 = 20;
/// Fill (percent) at which a table is reported as nearly full.
const WARN_PERCENT: usize = 90;
/// Fill (percent) below which a reported table may be reported again.
const CLEAR_PERCENT: usize = 80;

/// Starts counting.
///
/// # Errors
///
/// When the datapath cannot open its connection tables.
pub async fn spawn(engine: Arc<Mutex<Engine>>) -> anyhow::Result<()> {
    let mut counter = engine.lock().await.connection_tables()?;
    tokio::spawn(async move {
        let mut reported: Vec<&'static str> = Vec::new();
        let mut pause = Duration::ZERO;
        loop {
            tokio::time::sleep(pause).await;
            let started = std::time::Instant::now();
            let counted = tokio::task::spawn_blocking(move || {
                let fill = counter.count();
                (counter, fill)
            })
            .await;
            pause = COUNT_PERIOD.max(started.elapsed() * COUNT_DUTY);
            let fill = match counted {
                Ok((back, Ok(fill))) => {
                    counter = back;
                    fill
                }
                Ok((back, Err(e))) => {
                    counter = back;
                    error!("counting the connection tables failed: {e:#}");
                    continue;
                }
                Err(e) => {
                    error!("the connection table count stopped: {e}");
                    return;
                }
            };
            for table in &fill {
                report(table, &mut reported);
            }
            engine.lock().await.set_conntrack_fill(fill);
        }
    });
    Ok(())
}

/// The fill in percent of where eviction starts.
fn percent(table: &TableFill) -> usize {
    table.entries.saturating_mul(100) / table.evicting_from.max(1)
}

fn report(table: &TableFill, reported: &mut Vec<&'static str>) {
    let percent = percent(table);
    let was_reported = reported.contains(&table.table);
    if percent >= WARN_PERCENT && !was_reported {
        warn!(
            table = table.table,
            entries = table.entries,
            capacity = table.capacity,
            "connection table {} is nearly full ({percent} % of the {} entries from which the kernel evicts the least recently used connections; an evicted idle connection loses its state and its next packet is judged anew): raise datapath.ct_{}_max",
            table.table,
            table.evicting_from,
            if table.table == "tcp" { "tcp" } else { "any" }
        );
        reported.push(table.table);
    } else if percent < CLEAR_PERCENT && was_reported {
        info!(
            table = table.table,
            entries = table.entries,
            "connection table {} is below {CLEAR_PERCENT} % again",
            table.table
        );
        reported.retain(|name| *name != table.table);
    }
}
