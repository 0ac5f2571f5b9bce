//! Serving HTTP on the control socket and the metrics listener with limits,
//! so that no local user can take palisaded's file descriptors or its
//! attention: connections are counted per listener (and on the control
//! socket per uid, root apart), a connection over its limit is closed at
//! once, and a client that sends no complete request header within
//! [`HEADER_READ_TIMEOUT`] (also between requests on a kept-alive
//! connection) is disconnected.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::authz::Peer;

/// How long a client may take to send a request header (from connecting,
/// or from the end of its previous request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections the control socket takes at once.
#[derive(Debug, Clone, Copy)]
pub struct ControlLimits {
    /// Connections of root (uid 0), counted apart so others cannot crowd it out.
    pub root: usize,
    /// Connections of any one other uid.
    pub per_uid: usize,
    /// Connections of all other uids together.
    pub others: usize,
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            root: 64,
            per_uid: 16,
            others: 128,
        }
    }
}

/// Connections open per uid (`None`: all non-root together).
#[derive(Debug, Default)]
struct Counts {
    root: usize,
    others: usize,
    by_uid: HashMap<u32, usize>,
}

/// A connection slot, given back on drop.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: Option<u32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match self.uid {
            Some(0) => counts.root -= 1,
            uid => {
                counts.others -= 1;
                if let Some(uid) = uid
                    && let Some(count) = counts.by_uid.get_mut(&uid)
                {
                    *count -= 1;
                    if *count == 0 {
                        counts.by_uid.remove(&uid);
                    }
                }
            }
        }
    }
}

/// A slot for a peer of `uid`, unless its limits are reached.
fn take_slot(counts: &Arc<Mutex<Counts>>, limits: ControlLimits, uid: Option<u32>) -> Option<Slot> {
    let mut guard = counts.lock().unwrap_or_else(|p| p.into_inner());
    match uid {
        Some(0) => {
            if guard.root >= limits.root {
                return None;
            }
            guard.root += 1;
        }
        _ => {
            let of_uid = uid.map_or(0, |uid| guard.by_uid.get(&uid).copied().unwrap_or(0));
            if guard.others >= limits.others || of_uid >= limits.per_uid {
                return None;
            }
            guard.others += 1;
            if let Some(uid) = uid {
                *guard.by_uid.entry(uid).or_insert(0) += 1;
            }
        }
    }
    Some(Slot {
        counts: Arc::clone(counts),
        uid,
    })
}

/// Serves `router` on the control socket until `shutdown` completes; each
/// request carries its peer's credentials (`ConnectInfo<Peer>`).
///
/// # Errors
///
/// When accepting fails for another reason than a full descriptor table
/// or an aborted connection.
pub async fn control(
    listener: UnixListener,
    router: Router,
    limits: ControlLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                if transient(&error)? {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let peer = Peer::of(&stream);
        let Some(slot) = take_slot(&counts, limits, peer.uid) else {
            debug!(uid = ?peer.uid, pid = ?peer.pid, "control connection over its limit: refused");
            tokio::spawn(refuse(
                stream,
                format!(
                    "too many open connections from uid {} (at most {} per user, {} for all but root); close some and try again",
                    peer.uid
                        .map_or_else(|| "?".to_owned(), |uid| uid.to_string()),
                    limits.per_uid,
                    limits.others
                ),
            ));
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = router.map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer.clone()));
                request
            });
            serve_connection(stream, service).await;
            drop(slot);
        });
    }
}

/// Answers a connection over its limit with `503` and a JSON error (what
/// palisadectl shows), then closes it; gives up after a second.
async fn refuse(mut stream: tokio::net::UnixStream, error: String) {
    use tokio::io::AsyncWriteExt as _;
    let body = serde_json::json!({ "error": error }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serves `router` on `listener` (the metrics listener), at most `limit`
/// connections at once.
pub async fn tcp(listener: TcpListener, router: Router, limit: usize) {
    let open = Arc::new(tokio::sync::Semaphore::new(limit));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                match transient(&error) {
                    Ok(true) => tokio::time::sleep(ACCEPT_BACKOFF).await,
                    Ok(false) => {}
                    Err(_) => {
                        warn!(%error, "the metrics listener stopped");
                        return;
                    }
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            debug!("metrics connection over the limit: closed");
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(stream, router).await;
            drop(permit);
        });
    }
}

/// Serves one connection over HTTP/1 with the header read timeout.
async fn serve_connection<I, S>(io: I, service: S)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(error) = connection.await {
        debug!(%error, "connection ended");
    }
}

/// How long accepting pauses when the descriptor table is full.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Whether an accept error leaves the listener usable: a full descriptor
/// table (`Ok(true)`: pause [`ACCEPT_BACKOFF`] to let it drain instead of
/// spinning), a connection aborted before it was accepted (`Ok(false)`);
/// the error otherwise.
fn transient(error: &std::io::Error) -> std::io::Result<bool> {
    match error.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            warn!(%error, "cannot accept a connection now");
            Ok(true)
        }
        Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) => Ok(false),
        _ => Err(std::io::Error::new(error.kind(), error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_its_own_slots_and_each_uid_is_capped() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let limits = ControlLimits {
            root: 2,
            per_uid: 2,
            others: 3,
        };
        let a: Vec<_> = (0..3)
            .filter_map(|_| take_slot(&counts, limits, Some(1000)))
            .collect();
        assert_eq!(a.len(), 2, "one uid holds at most per_uid");
        let b = take_slot(&counts, limits, Some(1001)).expect("another uid");
        assert!(
            take_slot(&counts, limits, Some(1002)).is_none(),
            "others are full"
        );
        let root: Vec<_> = (0..2)
            .filter_map(|_| take_slot(&counts, limits, Some(0)))
            .collect();
        assert_eq!(root.len(), 2, "root is counted apart");
        drop(b);
        assert!(
            take_slot(&counts, limits, Some(1002)).is_some(),
            "a slot came back"
        );
    }
}
