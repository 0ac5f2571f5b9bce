//! The control socket: HTTP/JSON over a Unix socket (see the `api` crate).

use std::{
    convert::Infallible,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path as UrlPath, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::{StreamExt as _, stream};
use palisade_api::{
    ApplyRequest, ApplyResponse, CONNTRACK_DEFAULT_LIMIT, CONNTRACK_MAX_LIMIT, ConfirmResponse,
    ConnectionState, ConntrackEntry, ConntrackFlush, ConntrackList, EndpointGc, EndpointKey,
    EndpointRegistration, ErrorBody, FlowQuery, RotateKeyRequest, RotatedKey, TrafficDirection,
    paths,
};
use palisade_common::protocol;
use palisade_policy::{Direction, PolicyName, describe::protocol_name};
use tokio::{
    net::UnixListener,
    sync::{Mutex, OwnedMutexGuard},
};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tracing::{error, warn};

use crate::{
    authz::{Access, Authorizer, Peer},
    config::ConfigError,
    datapath::{ConnectionState as TrackedState, ConnectionTables, TrackedConnection},
    encryption::{self, Encryption},
    endpoints::{EndpointRegistry, RegistryError},
    engine::{ApplyError, Engine, ParsedFiles, on_blocking_thread, parse_request},
    flows::FlowHub,
    metrics::Metrics,
    reload::{ReloadError, Reloader},
    request_body::{self, BodyError},
    systemd,
};

/// Why WireGuard requests are refused while WireGuard is not in use.
const WIREGUARD_OFF: &str =
    "WireGuard is not in use: set `mode = \"wireguard\"` under [encryption] in palisade.toml";

/// Largest request body accepted as sent (compressed or not).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Largest apply request once decompressed: a policy of 100,000 one-CIDR
/// rules is about 12 MiB of JSON, which palisadectl sends gzip-compressed
/// (about 1 MiB). Applying takes the write permission.
const MAX_APPLY_BYTES: usize = 64 * 1024 * 1024;
/// Largest diff request once decompressed: the read permission suffices
/// for a diff, so it keeps the plain limit (palisaded's memory under a
/// hostile reader).
const MAX_DIFF_BYTES: usize = MAX_REQUEST_BYTES;
/// Longest a request may take, reading its body included (flow streams excepted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share.
#[derive(Clone)]
pub struct ControlState {
    /// The policy engine.
    pub engine: Arc<Mutex<Engine>>,
    /// The flow buffer.
    pub hub: Arc<FlowHub>,
    /// Apply counters and durations.
    pub metrics: Arc<Metrics>,
    /// Who may do what.
    pub authorizer: Arc<Authorizer>,
    /// The encryption between nodes, when it is on.
    pub encryption: Option<Arc<Encryption>>,
    /// The running configuration, read again on reload (lock it after
    /// the engine, as SIGHUP does).
    pub reloader: Arc<std::sync::Mutex<Reloader>>,
    /// The connection tables, read without the engine (one listing at a time).
    pub connections: Arc<std::sync::Mutex<Box<dyn ConnectionTables>>>,
    /// The pod endpoints palisade-cni registered.
    pub endpoints: Arc<std::sync::Mutex<EndpointRegistry>>,
}

/// Binds the control socket, replacing a stale one: mode 0660, group `group`
/// when given.
///
/// # Errors
///
/// When the socket's directory cannot be created or the socket cannot be
/// bound, chowned or chmodded.
pub fn bind(socket: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // Only a stale socket is replaced: anything else at that path is
    // somebody's file, and palisaded refuses to start rather than delete it.
    match std::fs::symlink_metadata(socket) {
        Ok(metadata) if std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()) => {
            std::fs::remove_file(socket)
                .with_context(|| format!("removing stale {}", socket.display()))?;
        }
        Ok(_) => {
            anyhow::bail!(
                "{} exists and is not a socket: palisaded will not replace it; remove it or set control.socket to another path",
                socket.display()
            );
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("looking at {}", socket.display()));
        }
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(socket, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", socket.display()))?;
    }
    Ok(listener)
}

/// The routes, behind the peer-credential check and the request timeout.
pub fn router(state: ControlState) -> Router {
    Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::COUNTERS, get(counters))
        .route(paths::POLICIES, get(list).post(apply))
        .route(
            // `NAME` or `NAMESPACE/NAME`.
            &format!("{}{{*name}}", paths::POLICY),
            get(policy).delete(delete),
        )
        .route(paths::DIFF, post(diff))
        .route(paths::CONFIRM, post(confirm))
        .route(paths::RELOAD, post(reload))
        .route(paths::CONNTRACK, get(conntrack).delete(flush_conntrack))
        .route(paths::FLOWS, get(flows))
        .route(paths::ENCRYPTION, get(encryption_status))
        .route(paths::WIREGUARD, get(wireguard))
        .route(paths::WIREGUARD_ROTATE_KEY, post(rotate_wireguard_key))
        .route(
            paths::ENDPOINTS,
            get(list_endpoints).post(register_endpoint),
        )
        .route(
            &format!("{}{{container_id}}/{{interface}}", paths::ENDPOINT),
            axum::routing::delete(remove_endpoint),
        )
        .route(paths::ENDPOINTS_GC, post(collect_endpoints))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// Refuses peers the configuration does not allow (403, logged), and bounds
/// the time a request may take, body included (flow streams excepted).
async fn authorize(State(state): State<ControlState>, request: Request, next: Next) -> Response {
    let access = if request.method() == Method::GET || request.uri().path() == paths::DIFF {
        Access::Read
    } else {
        Access::Change
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|info| info.0.clone());
    let verdict = match &peer {
        Some(peer) => state.authorizer.check(peer, access),
        None => Err("the peer's credentials are unknown".to_owned()),
    };
    if let Err(reason) = verdict {
        warn!(
            uid = peer.as_ref().and_then(|peer| peer.uid),
            pid = peer.as_ref().and_then(|peer| peer.pid),
            method = %request.method(),
            path = request.uri().path(),
            "control request refused: {reason}"
        );
        return message(StatusCode::FORBIDDEN, reason);
    }
    if request.uri().path() == paths::FLOWS {
        return next.run(request).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => message(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s and was abandoned",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
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

/// The response for a request the engine refused.
fn refusal(error: ApplyError) -> Response {
    match error {
        ApplyError::Invalid(diagnostics) => self::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorBody {
                error: format!(
                    "{} problem(s) found; nothing was changed",
                    diagnostics.0.len()
                ),
                diagnostics: diagnostics.0,
            },
        ),
        e @ (ApplyError::Compile(_) | ApplyError::Capacity(_)) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}; nothing was changed"),
        ),
        e @ ApplyError::NotFound(_) => message(StatusCode::NOT_FOUND, e.to_string()),
        e @ (ApplyError::ConfirmPending { .. } | ApplyError::NothingPending) => {
            message(StatusCode::CONFLICT, e.to_string())
        }
        e @ (ApplyError::Storage(_) | ApplyError::Datapath(_)) => {
            message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// A JSON body, or what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        Refused::from(message(
            StatusCode::BAD_REQUEST,
            format!("malformed {what} request: {e}"),
        ))
    })
}

async fn status(State(state): State<ControlState>) -> Response {
    match state.engine.lock().await.status() {
        Ok(status) => Json(status).into_response(),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn counters(State(state): State<ControlState>) -> Response {
    match state.engine.lock().await.counters() {
        Ok(counters) => Json(counters).into_response(),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn list(State(state): State<ControlState>) -> Response {
    Json(state.engine.lock().await.list()).into_response()
}

async fn policy(State(state): State<ControlState>, UrlPath(name): UrlPath<String>) -> Response {
    match state.engine.lock().await.get(&PolicyName::parse(&name)) {
        Ok(document) => Json(document).into_response(),
        Err(e) => refusal(e),
    }
}

/// The request body of `what`, decompressed within `limit`; a body over
/// [`MAX_REQUEST_BYTES`] as sent, or refused by [`request_body::decode`],
/// is answered 413 or 400 with the limit named.
fn request_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    what: &'static str,
) -> Result<Bytes, Refused> {
    let body = body.map_err(|rejection| {
        message(
            rejection.status(),
            format!(
                "the {what} request could not be read ({}); palisaded takes request bodies of up to {} MiB as sent (palisadectl compresses large ones)",
                rejection.body_text(),
                MAX_REQUEST_BYTES / (1024 * 1024)
            ),
        )
    })?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    request_body::decode(encoding, body, limit, what).map_err(|error| {
        let status = match error {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::UnknownEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::Corrupt(_) => StatusCode::BAD_REQUEST,
        };
        Refused::from(message(status, error.to_string()))
    })
}

async fn apply(
    State(state): State<ControlState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = request_body(&headers, body, MAX_APPLY_BYTES, "apply")?;
    let request: ApplyRequest = parse(&body, "apply")?;
    let started = Instant::now();
    let parsed = parse_off_the_engine(&state, request.files.clone())
        .await
        .inspect_err(|_| state.metrics.record_apply("invalid", started.elapsed()))?;
    let (engine, result) = with_engine_blocking(&state.engine, move |engine| {
        engine.apply_parsed(parsed, &request)
    })
    .await?;
    let outcome = match &result {
        Ok(response) if response.dry_run => "dry_run",
        Ok(_) => "applied",
        Err(ApplyError::Invalid(_) | ApplyError::Compile(_) | ApplyError::Capacity(_)) => "invalid",
        Err(ApplyError::Datapath(_)) => "datapath_error",
        Err(_) => "refused",
    };
    state.metrics.record_apply(outcome, started.elapsed());
    Ok(changed(&state.engine, &engine, result))
}

async fn delete(
    State(state): State<ControlState>,
    UrlPath(name): UrlPath<String>,
    Query(options): Query<DeleteOptions>,
) -> Result<Response, Refused> {
    let (engine, result) = with_engine_blocking(&state.engine, move |engine| {
        engine.delete(&PolicyName::parse(&name), options.dry_run)
    })
    .await?;
    Ok(changed(&state.engine, &engine, result))
}

async fn reload(State(state): State<ControlState>) -> Result<Response, Refused> {
    let (reloader, encryption) = (Arc::clone(&state.reloader), state.encryption.clone());
    let (engine, result) = with_engine_blocking(&state.engine, move |engine| {
        reload_configuration(&reloader, engine, encryption.as_deref())
    })
    .await?;
    Ok(match result {
        Ok(response) => changed(&state.engine, &engine, Ok(response)),
        Err(ReloadError::Apply(error)) => refusal(error),
        Err(ReloadError::Config(ConfigError::Invalid(diagnostics))) => self::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorBody {
                error: format!(
                    "{} problem(s) in the configuration; nothing was changed",
                    diagnostics.0.len()
                ),
                diagnostics: diagnostics.0,
            },
        ),
        Err(error @ ReloadError::Config(_)) => {
            message(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
        Err(error @ (ReloadError::NeedsRestart { .. } | ReloadError::Encryption(_))) => {
            message(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
    })
}

/// A request that ends early with its answer already made (a bad body, a
/// refused file, a change that failed unexpectedly): handlers return
/// `Result<Response, Refused>` and stop with `?`.
pub struct Refused(Box<Response>);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<Response> for Refused {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

/// Runs `change` with the engine held, on a blocking thread: installs write
/// maps, the store fsyncs, the tunnel talks netlink, none of which belongs
/// on the executor that answers everyone else. Hands the engine back with
/// the result.
///
/// # Errors
///
/// A 500 response when `change` panicked (the engine is released then).
pub async fn with_engine_blocking<T: Send + 'static>(
    engine: &Arc<Mutex<Engine>>,
    change: impl FnOnce(&mut Engine) -> T + Send + 'static,
) -> Result<(OwnedMutexGuard<Engine>, T), Refused> {
    on_blocking_thread(engine, change).await.map_err(|error| {
        error!(%error, "a change to the rules failed unexpectedly");
        Refused::from(message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the change failed unexpectedly: {error}"),
        ))
    })
}

/// The one reload of SIGHUP and `POST /v1/reload`: the configuration and the
/// policies, put in force together with the encryption's nodes, or nothing.
///
/// # Errors
///
/// [`ReloadError`]; nothing changed then.
pub fn reload_configuration(
    reloader: &std::sync::Mutex<Reloader>,
    engine: &mut Engine,
    encryption: Option<&Encryption>,
) -> Result<ApplyResponse, ReloadError> {
    // A reload that panicked left the running configuration as it was.
    let mut reloader = reloader
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    reloader.reload(engine, encryption)
}

async fn rotate_wireguard_key(
    State(state): State<ControlState>,
    request: Option<Json<RotateKeyRequest>>,
) -> Response {
    let stage = request.is_some_and(|Json(request)| request.stage);
    on_the_tunnel(&state, move |tunnel| {
        tunnel.rotate_key(stage).map(|public_key| {
            Json(RotatedKey {
                public_key,
                staged: stage,
            })
            .into_response()
        })
    })
    .await
}

async fn list_endpoints(State(state): State<ControlState>) -> Response {
    let registry = state.endpoints.lock().unwrap_or_else(|p| p.into_inner());
    Json(registry.list()).into_response()
}

async fn register_endpoint(
    State(state): State<ControlState>,
    Json(registration): Json<EndpointRegistration>,
) -> Response {
    // An interface that is not there (or is another one by now) would be
    // an endpoint nothing enforces on.
    let index = nix::net::if_::if_nametoindex(registration.host_interface.as_str()).ok();
    if index != Some(registration.host_ifindex) {
        return message(
            StatusCode::BAD_REQUEST,
            format!(
                "host interface {} with index {} does not exist on this node",
                registration.host_interface, registration.host_ifindex
            ),
        );
    }
    on_the_registry(state, move |registry| {
        registry
            .register(registration)
            .map(|endpoint| Json(endpoint).into_response())
    })
    .await
}

async fn remove_endpoint(
    State(state): State<ControlState>,
    UrlPath((container_id, interface)): UrlPath<(String, String)>,
) -> Response {
    let key = EndpointKey {
        container_id,
        interface,
    };
    on_the_registry(state, move |registry| {
        registry
            .remove(&key)
            .map(|removed| Json(removed).into_response())
    })
    .await
}

async fn collect_endpoints(
    State(state): State<ControlState>,
    Json(gc): Json<EndpointGc>,
) -> Response {
    on_the_registry(state, move |registry| {
        registry
            .collect(&gc)
            .map(|removed| Json(removed).into_response())
    })
    .await
}

/// Runs a change of the endpoint registry (which saves it: a blocking
/// write) off the async threads.
async fn on_the_registry(
    state: ControlState,
    work: impl FnOnce(&mut EndpointRegistry) -> Result<Response, RegistryError> + Send + 'static,
) -> Response {
    let joined = tokio::task::spawn_blocking(move || {
        let mut registry = state.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = work(&mut registry);
        if outcome.is_ok() {
            state.hub.set_pods(registry.flow_pods());
        }
        outcome
    })
    .await;
    match joined {
        Ok(Ok(response)) => response,
        Ok(Err(error @ RegistryError::Invalid(_))) => {
            message(StatusCode::BAD_REQUEST, error.to_string())
        }
        Ok(Err(error @ (RegistryError::Full | RegistryError::Identities(_)))) => {
            message(StatusCode::INSUFFICIENT_STORAGE, error.to_string())
        }
        Ok(Err(error @ RegistryError::Save(_))) => {
            error!("{error}");
            message(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
        Err(join) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the endpoint registry's worker failed: {join}"),
        ),
    }
}

/// Reports a change to systemd, arms the rollback of an apply on probation,
/// and answers; `engine` is the locked `shared`, which the rollback takes later.
fn changed(
    shared: &Arc<Mutex<Engine>>,
    engine: &Engine,
    result: Result<ApplyResponse, ApplyError>,
) -> Response {
    match result {
        Ok(response) => {
            if !response.dry_run {
                systemd::status(&engine.summary());
                if response.pending_confirm.is_some()
                    && let Some((generation, deadline)) = engine.confirm_deadline()
                {
                    spawn_rollback(Arc::clone(shared), generation, deadline);
                }
            }
            Json(response).into_response()
        }
        Err(e) => refusal(e),
    }
}

/// Rolls generation `generation` back at `deadline` unless it was confirmed.
pub fn spawn_rollback(engine: Arc<Mutex<Engine>>, generation: u32, deadline: std::time::Instant) {
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        match on_blocking_thread(&engine, move |engine| engine.roll_back(generation)).await {
            Ok((engine, Ok(true))) => systemd::status(&engine.summary()),
            Ok((_, Ok(false))) => {}
            Ok((_, Err(e))) => error!("rolling back generation {generation} failed: {e}"),
            Err(e) => error!("rolling back generation {generation} failed unexpectedly: {e}"),
        }
    });
}

async fn diff(
    State(state): State<ControlState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = request_body(&headers, body, MAX_DIFF_BYTES, "diff")?;
    let request: ApplyRequest = parse(&body, "diff")?;
    let parsed = parse_off_the_engine(&state, request.files).await?;
    // Compiling the candidate set and replaying flows is work for a
    // blocking thread too.
    let (_, diff) =
        with_engine_blocking(&state.engine, move |engine| engine.diff_parsed(parsed)).await?;
    Ok(match diff {
        Ok(diff) => Json(diff).into_response(),
        Err(e) => refusal(e),
    })
}

/// Parses a request's files on a blocking thread, holding the engine only
/// for a moment to learn what validation accepts: a large or hostile file
/// (an apply or diff by a read-only member) never stalls status.
async fn parse_off_the_engine(
    state: &ControlState,
    files: Vec<palisade_api::PolicyFile>,
) -> Result<ParsedFiles, Refused> {
    let options = state.engine.lock().await.validate_options();
    match tokio::task::spawn_blocking(move || parse_request(&files, options)).await {
        Ok(Ok(parsed)) => Ok(parsed),
        Ok(Err(error)) => Err(Refused::from(refusal(error))),
        Err(error) => Err(Refused::from(message(
            StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        ))),
    }
}

async fn confirm(State(state): State<ControlState>) -> Result<Response, Refused> {
    // Confirming saves the policies: file writes and fsync.
    let (engine, confirmed) = with_engine_blocking(&state.engine, Engine::confirm).await?;
    Ok(match confirmed {
        Ok(generation) => {
            systemd::status(&engine.summary());
            Json(ConfirmResponse { generation }).into_response()
        }
        Err(e) => refusal(e),
    })
}

/// Query of `GET /v1/conntrack`.
#[derive(Debug, serde::Deserialize)]
struct ConntrackQuery {
    #[serde(default = "default_conntrack_limit")]
    limit: usize,
}

fn default_conntrack_limit() -> usize {
    CONNTRACK_DEFAULT_LIMIT
}

/// Lists up to `limit` tracked connections (at most
/// [`CONNTRACK_MAX_LIMIT`]): the tables are walked on their own handles off
/// the executor, one listing at a time, and the engine is held only to name
/// the rules that opened them.
async fn conntrack(
    State(state): State<ControlState>,
    Query(query): Query<ConntrackQuery>,
) -> Response {
    let limit = query.limit.min(CONNTRACK_MAX_LIMIT);
    let tables = Arc::clone(&state.connections);
    let listed = tokio::task::spawn_blocking(move || {
        tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .list(limit)
    })
    .await;
    let (connections, total) = match listed {
        Ok(Ok(listed)) => listed,
        Ok(Err(e)) => return message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => return message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let names = state
        .engine
        .lock()
        .await
        .rule_names(connections.iter().map(|connection| connection.rule_id));
    // Sorting and encoding tens of thousands of entries is work for a
    // blocking thread, not for the executor that answers everyone else.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut connections = connections;
        sort_connections(&mut connections);
        let entries: Vec<ConntrackEntry> = connections
            .iter()
            .map(|connection| conntrack_entry(connection, &names))
            .collect();
        serde_json::to_vec(&ConntrackList {
            truncated: entries.len() < total,
            entries,
            total,
        })
    })
    .await;
    match encoded {
        Ok(Ok(body)) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Ok(Err(e)) => message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The order `ct list` shows: protocol, then source, source port and
/// destination as addresses and numbers (10.0.0.9 before 10.0.0.10).
fn sort_connections(connections: &mut [TrackedConnection]) {
    connections.sort_by_key(|connection| {
        (
            connection.protocol,
            connection.source,
            connection.source_port,
            connection.destination,
            connection.destination_port,
        )
    });
}

/// A tracked connection as the socket shows it.
fn conntrack_entry(
    connection: &TrackedConnection,
    names: &std::collections::BTreeMap<u32, String>,
) -> ConntrackEntry {
    ConntrackEntry {
        protocol: match connection.protocol {
            protocol::ICMP => "ICMP".to_owned(),
            protocol::ICMPV6 => "ICMPv6".to_owned(),
            code => protocol_name(code).to_uppercase(),
        },
        source: connection.source,
        destination: connection.destination,
        source_port: connection.source_port,
        destination_port: connection.destination_port,
        direction: match connection.direction {
            Direction::Ingress => TrafficDirection::Ingress,
            Direction::Egress => TrafficDirection::Egress,
        },
        state: match connection.state {
            TrackedState::Opening => ConnectionState::Opening,
            TrackedState::Established => ConnectionState::Established,
            TrackedState::Closing => ConnectionState::Closing,
        },
        expires_in_seconds: connection.expires_in.as_secs(),
        opened_by: names.get(&connection.rule_id).cloned().unwrap_or_default(),
    }
}

async fn wireguard(State(state): State<ControlState>) -> Response {
    on_the_tunnel(&state, |tunnel| {
        tunnel.status().map(|status| Json(status).into_response())
    })
    .await
}

/// Runs `work` on the WireGuard tunnel on a blocking thread (it talks
/// netlink or the UAPI socket); 404 when WireGuard is not in use.
async fn on_the_tunnel(
    state: &ControlState,
    work: impl FnOnce(&encryption::wireguard::Tunnel) -> anyhow::Result<Response> + Send + 'static,
) -> Response {
    let Some(tunnel) = state
        .encryption
        .as_deref()
        .and_then(Encryption::wireguard)
        .cloned()
    else {
        return message(StatusCode::NOT_FOUND, WIREGUARD_OFF.to_owned());
    };
    let done = tokio::task::spawn_blocking(move || work(&tunnel)).await;
    match done {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
    }
}

/// How traffic to the other nodes is encrypted; `disabled` when it is not.
async fn encryption_status(State(state): State<ControlState>) -> Response {
    let Some(encryption) = state.encryption.clone() else {
        return Json(encryption::disabled()).into_response();
    };
    match tokio::task::spawn_blocking(move || encryption.status()).await {
        Ok(Ok(status)) => Json(status).into_response(),
        Ok(Err(e)) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
    }
}

async fn flush_conntrack(State(state): State<ControlState>) -> Result<Response, Refused> {
    // Hundreds of thousands of map deletions, perhaps.
    let (_, flushed) =
        with_engine_blocking(&state.engine, |engine| engine.flush_connections()).await?;
    Ok(match flushed {
        Ok(removed) => Json(ConntrackFlush { removed }).into_response(),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    })
}

/// Query of `DELETE /v1/policies/NAME`.
#[derive(Debug, Default, serde::Deserialize)]
struct DeleteOptions {
    #[serde(default)]
    dry_run: bool,
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

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use palisade_policy::Direction;

    use super::sort_connections;
    use crate::datapath::{ConnectionState, TrackedConnection};

    fn tcp_from(source: &str, port: u16) -> TrackedConnection {
        TrackedConnection {
            protocol: 6,
            source: source.parse::<IpAddr>().unwrap(),
            destination: "10.255.0.1".parse().unwrap(),
            source_port: port,
            destination_port: 22,
            direction: Direction::Ingress,
            state: ConnectionState::Established,
            expires_in: Duration::from_secs(60),
            rule_id: 0,
        }
    }

    #[test]
    fn connections_sort_by_address_and_port_not_by_text() {
        let mut connections = vec![
            tcp_from("10.0.0.10", 1),
            tcp_from("10.0.0.9", 100),
            tcp_from("10.0.0.9", 20),
        ];
        sort_connections(&mut connections);
        let order: Vec<(String, u16)> = connections
            .iter()
            .map(|c| (c.source.to_string(), c.source_port))
            .collect();
        assert_eq!(
            order,
            [
                ("10.0.0.9".to_owned(), 20),
                ("10.0.0.9".to_owned(), 100),
                ("10.0.0.10".to_owned(), 1)
            ]
        );
    }
}
