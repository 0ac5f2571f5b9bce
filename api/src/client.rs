//! A client of the control socket.

use std::path::{Path, PathBuf};

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::{Stream, stream};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use crate::{
    ApplyRequest, ApplyResponse, ConfirmResponse, ConntrackFlush, ConntrackList, Counters,
    DiffResponse, EncryptionStatus, Endpoint, EndpointGc, EndpointKey, EndpointList,
    EndpointRegistration, EndpointsRemoved, ErrorBody, Flow, FlowQuery, PolicyDocument, PolicyList,
    RotateKeyRequest, RotatedKey, Status, WireGuardStatus, paths,
};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach palisaded at {}: {source} (is the service running? `systemctl status palisade`)", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// Why connecting failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to palisaded failed: {0}")]
    Http(#[from] hyper::Error),
    /// The daemon refused the request.
    #[error("palisaded refused the request ({status}): {}", body.error)]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The daemon's explanation.
        body: ErrorBody,
    },
    /// The request could not be built (a client-side problem; nothing was sent).
    #[error("cannot build the request to palisaded: {0}")]
    Request(String),
    /// A response body was not what the protocol says.
    #[error("palisaded sent a response this client does not understand: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A client of one daemon's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the socket at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_owned(),
        }
    }

    /// The daemon's status.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, paths::STATUS, None::<&()>).await
    }

    /// Packet counters.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn counters(&self) -> Result<Counters, ClientError> {
        self.call(Method::GET, paths::COUNTERS, None::<&()>).await
    }

    /// Applies policy files (or checks them, on a dry run).
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] with positioned diagnostics when a file is invalid.
    pub async fn apply(&self, request: &ApplyRequest) -> Result<ApplyResponse, ClientError> {
        self.call(Method::POST, paths::POLICIES, Some(request))
            .await
    }

    /// What applying the request's files would change; changes nothing.
    ///
    /// # Errors
    ///
    /// As [`Client::apply`].
    pub async fn diff(&self, request: &ApplyRequest) -> Result<DiffResponse, ClientError> {
        self.call(Method::POST, paths::DIFF, Some(request)).await
    }

    /// Keeps the rules of an apply made with a confirm deadline.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] (409) when nothing waits for confirmation.
    pub async fn confirm(&self) -> Result<ConfirmResponse, ClientError> {
        self.call(Method::POST, paths::CONFIRM, None::<&()>).await
    }

    /// Re-reads the policy directory and the saved policies.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn reload(&self) -> Result<ApplyResponse, ClientError> {
        self.call(Method::POST, paths::RELOAD, None::<&()>).await
    }

    /// The policies in force.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn policies(&self) -> Result<PolicyList, ClientError> {
        self.call(Method::GET, paths::POLICIES, None::<&()>).await
    }

    /// One policy in force, as it was given.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] (404) when there is none of that name.
    pub async fn policy(&self, name: &str) -> Result<PolicyDocument, ClientError> {
        let path = format!("{}{}", paths::POLICY, encode_segment(name));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Removes a policy (on a dry run, says what would change).
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] (404) when there is none of that name.
    pub async fn delete(&self, name: &str, dry_run: bool) -> Result<ApplyResponse, ClientError> {
        let path = format!(
            "{}{}?dry_run={dry_run}",
            paths::POLICY,
            encode_segment(name)
        );
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// Up to `limit` tracked connections (the daemon caps it at
    /// [`crate::CONNTRACK_MAX_LIMIT`]) and how many there are.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn conntrack(&self, limit: usize) -> Result<ConntrackList, ClientError> {
        let path = format!("{}?limit={limit}", paths::CONNTRACK);
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// How traffic to the other nodes is encrypted, and the backend's state.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn encryption(&self) -> Result<EncryptionStatus, ClientError> {
        self.call(Method::GET, paths::ENCRYPTION, None::<&()>).await
    }

    /// The WireGuard tunnel's state.
    ///
    /// # Errors
    ///
    /// See [`ClientError`]; refused (404) when encryption is off.
    pub async fn wireguard(&self) -> Result<WireGuardStatus, ClientError> {
        self.call(Method::GET, paths::WIREGUARD, None::<&()>).await
    }

    /// Switches the tunnel to a new WireGuard key pair (the staged one if
    /// there is one), or with `stage` only makes and publishes the next pair.
    ///
    /// # Errors
    ///
    /// See [`ClientError`]; refused (404) when encryption is off.
    pub async fn rotate_wireguard_key(&self, stage: bool) -> Result<RotatedKey, ClientError> {
        let request = RotateKeyRequest { stage };
        self.call(Method::POST, paths::WIREGUARD_ROTATE_KEY, Some(&request))
            .await
    }

    /// Forgets every tracked connection.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn flush_conntrack(&self) -> Result<ConntrackFlush, ClientError> {
        self.call(Method::DELETE, paths::CONNTRACK, None::<&()>)
            .await
    }

    /// Streams flows: the buffered ones, then (with `follow`) new ones as they come.
    ///
    /// # Errors
    ///
    /// See [`ClientError`]; errors while streaming come as stream items.
    pub async fn flows(
        &self,
        query: &FlowQuery,
    ) -> Result<impl Stream<Item = Result<Flow, ClientError>> + use<>, ClientError> {
        let query_string = serde_urlencoded::to_string(query)
            .map_err(|error| ClientError::Request(format!("flow query: {error}")))?;
        let path = format!("{}?{query_string}", paths::FLOWS);
        let response = check(self.send(Method::GET, &path, None::<&()>).await?).await?;
        let state = (response.into_body(), BytesMut::new());
        Ok(stream::unfold(Some(state), |state| async move {
            let (mut body, mut buffer) = state?;
            loop {
                if let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
                    let line = buffer.split_to(end + 1);
                    let flow = serde_json::from_slice(&line[..end]).map_err(ClientError::from);
                    return Some((flow, Some((body, buffer))));
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(mut data) = frame.into_data() {
                            while data.has_remaining() {
                                let chunk = data.chunk();
                                buffer.extend_from_slice(chunk);
                                let n = chunk.len();
                                data.advance(n);
                            }
                        }
                    }
                    Some(Err(error)) => return Some((Err(error.into()), None)),
                    None => return None,
                }
            }
        }))
    }

    /// The registered pod endpoints.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn endpoints(&self) -> Result<EndpointList, ClientError> {
        self.call(Method::GET, paths::ENDPOINTS, None::<&()>).await
    }

    /// Registers an endpoint (replacing one with the same key).
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] (400) when the registration is invalid.
    pub async fn register_endpoint(
        &self,
        registration: &EndpointRegistration,
    ) -> Result<Endpoint, ClientError> {
        self.call(Method::POST, paths::ENDPOINTS, Some(registration))
            .await
    }

    /// Forgets an endpoint; none of that key is no error.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn remove_endpoint(
        &self,
        key: &EndpointKey,
    ) -> Result<EndpointsRemoved, ClientError> {
        let path = format!(
            "{}{}/{}",
            paths::ENDPOINT,
            encode_segment(&key.container_id),
            encode_segment(&key.interface)
        );
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// Forgets the endpoints of a network that the runtime no longer has.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn collect_endpoints(
        &self,
        gc: &EndpointGc,
    ) -> Result<EndpointsRemoved, ClientError> {
        self.call(Method::POST, paths::ENDPOINTS_GC, Some(gc)).await
    }

    async fn call<T: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<R, ClientError> {
        decode(self.send(method, path, body).await?).await
    }

    async fn send<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let body = match body {
            Some(body) => serde_json::to_vec(body)?,
            None => Vec::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "palisade")
            .header(hyper::header::CONTENT_TYPE, "application/json");
        let body = if body.len() > COMPRESS_ABOVE {
            request = request.header(hyper::header::CONTENT_ENCODING, "gzip");
            gzip(&body).map_err(|error| ClientError::Request(error.to_string()))?
        } else {
            body
        };
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| ClientError::Request(error.to_string()))?;
        Ok(sender.send_request(request).await?)
    }
}

/// Request bodies longer than this go gzip-compressed (palisaded takes up
/// to 8 MiB as sent; a large policy compresses about tenfold).
const COMPRESS_ABOVE: usize = 256 * 1024;

/// `data` gzip-compressed (fast level: the socket is local).
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data)?;
    encoder.finish()
}

/// `segment` with every byte but `[A-Za-z0-9.-_~]` percent-encoded.
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_' | b'~') {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

async fn check(response: Response<Incoming>) -> Result<Response<Incoming>, ClientError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
        error: String::from_utf8_lossy(&bytes).into_owned(),
        diagnostics: Vec::new(),
    });
    Err(ClientError::Refused { status, body })
}

async fn decode<T: DeserializeOwned>(response: Response<Incoming>) -> Result<T, ClientError> {
    let bytes = check(response)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}
