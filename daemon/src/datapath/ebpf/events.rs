//! The flow-event ring buffer the programs write: read as it fills and
//! handed to the daemon's [`FlowSink`].

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use palisade_common::FlowEvent;
use tokio::io::unix::AsyncFd;
use tracing::{error, warn};

use crate::datapath::FlowSink;

/// The flow event in one ring-buffer record, or `None` when it is too short.
pub fn decode_event(record: &[u8]) -> Option<FlowEvent> {
    (record.len() >= size_of::<FlowEvent>()).then(|| {
        // SAFETY: the record holds at least one FlowEvent's bytes (checked),
        // FlowEvent is plain integers, and the read is unaligned-safe.
        unsafe { record.as_ptr().cast::<FlowEvent>().read_unaligned() }
    })
}

/// Reads flow events from the kernel's ring buffer until it fails.
pub async fn read_events(ring: RingBuf<MapData>, sink: Arc<dyn FlowSink>) {
    // SAFETY: the RingBuf owns its map fd, keeps it open and returns the same
    // fd for as long as it lives, and the AsyncFd owns the RingBuf.
    let registered = unsafe { AsyncFd::register(ring) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            error!(%error, "cannot poll the flow-event ring buffer: no flows will be shown");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                error!(%error, "polling the flow-event ring buffer failed: no more flows");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Some(event) => sink.record(&event),
                None => warn!(len = item.len(), "short flow event skipped"),
            }
        }
        guard.clear_ready();
    }
}
