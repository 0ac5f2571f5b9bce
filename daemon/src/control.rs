//! The control socket: HTTP/JSON over a Unix socket (see the `api` crate).

use std::{convert::Infallible, path::Path, sync::Arc, time::Instant};

use anyhow::Context as _;
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::{StreamExt as _, stream};
use palisade_api::{ApplyRequest, ErrorBody, FlowQuery, paths};
use tokio::{net::UnixListener, sync::Mutex};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tracing::warn;

use crate::{
    engine::{ApplyError, Engine},
    flows::FlowHub,
    metrics::Metrics,
    systemd,
};

/// Largest request body accepted.
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ControlState {
    /// The policy engine.
    pub engine: Arc<Mutex<Engine>>,
    /// The flow buffer.
    pub hub: Arc<FlowHub>,
    /// Apply counters and durations.
    pub metrics: Arc<Metrics>,
}

/// Binds the control socket, replacing a stale one.
///
/// # Errors
///
/// When the socket's directory cannot be created or the socket cannot be bound.
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("removing stale {}", socket.display()));
        }
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    Ok(listener)
}

/// The routes.
pub fn router(state: ControlState) -> Router {
    Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::POLICIES, post(apply))
        .route(paths::FLOWS, get(flows))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

fn error(status: StatusCode, body: ErrorBody) -> Response {
    (status, Json(body)).into_response()
}

/// An error response with a message and no diagnostics.
fn message(status: StatusCode, text: String) -> Response {
    error(
        status,
        ErrorBody {
            error: text,
            diagnostics: Vec::new(),
        },
    )
}

async fn status(State(state): State<ControlState>) -> Response {
    match state.engine.lock().await.status() {
        Ok(status) => Json(status).into_response(),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn apply(State(state): State<ControlState>, body: Bytes) -> Response {
    let request: ApplyRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                format!("malformed apply request: {e}"),
            );
        }
    };
    let started = Instant::now();
    let result = {
        let mut engine = state.engine.lock().await;
        let result = engine.apply(&request.files, request.dry_run);
        if result.as_ref().is_ok_and(|response| !response.dry_run) {
            systemd::status(&engine.summary());
        }
        result
    };
    let outcome = match &result {
        Ok(response) if response.dry_run => "dry_run",
        Ok(_) => "applied",
        Err(ApplyError::Invalid(_) | ApplyError::Compile(_)) => "invalid",
        Err(ApplyError::Datapath(_)) => "datapath_error",
    };
    state.metrics.record_apply(outcome, started.elapsed());
    match result {
        Ok(response) => Json(response).into_response(),
        Err(ApplyError::Invalid(diagnostics)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorBody {
                error: format!(
                    "{} problem(s) found; nothing was changed",
                    diagnostics.0.len()
                ),
                diagnostics: diagnostics.0,
            },
        ),
        Err(e @ ApplyError::Compile(_)) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}; nothing was changed"),
        ),
        Err(e @ ApplyError::Datapath(_)) => {
            message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn flows(State(state): State<ControlState>, Query(query): Query<FlowQuery>) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(e) => {
            return message(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let (recent, follower) = state.hub.snapshot(&filter, query.last, query.follow);
    let line = |flow: &palisade_api::Flow| -> Result<Bytes, Infallible> {
        let mut bytes = serde_json::to_vec(flow).unwrap_or_default();
        bytes.push(b'\n');
        Ok(Bytes::from(bytes))
    };
    let recent = stream::iter(recent.iter().map(line).collect::<Vec<_>>());
    let body = match follower {
        None => Body::from_stream(recent),
        Some(receiver) => {
            let live = BroadcastStream::new(receiver).filter_map(move |item| {
                let shown = match item {
                    Ok(flow) if filter.matches(&flow) => Some(line(&flow)),
                    Ok(_) => None,
                    Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                        warn!(
                            skipped,
                            "an observe --follow client fell behind; flows skipped"
                        );
                        None
                    }
                };
                std::future::ready(shown)
            });
            Body::from_stream(recent.chain(live))
        }
    };
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
