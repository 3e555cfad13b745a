//! Forwarding: the listener, the per-request service, and the response body that watches the
//! recorded calls go by.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use sa_cas::GrpcConfig;
use sa_proto::google::longrunning::{Operation, operation};
use sa_proto::reapi::{
    ExecuteRequest, ExecuteResponse, GetActionResultRequest, RequestMetadata, WaitExecutionRequest,
};
use serde_json::{Map, Value};
use tonic::body::Body;
use tower::{Service, ServiceExt};

use crate::activity::Activity;
use crate::limits::{Admitted, Budget, Connections, ProxyLimits, Share, StreamGuard, Throttled};
use crate::recording::{RecordWriter, Recorder};

/// Recorded lines waiting for the writing thread, at most (each a few hundred bytes).
const MAX_WAITING_LINES: usize = 65_536;

const EXECUTE: &str = "/build.bazel.remote.execution.v2.Execution/Execute";
const WAIT_EXECUTION: &str = "/build.bazel.remote.execution.v2.Execution/WaitExecution";
const GET_ACTION_RESULT: &str = "/build.bazel.remote.execution.v2.ActionCache/GetActionResult";
const METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";
/// The most unfinished Executes remembered for their WaitExecution.
const MAX_OPERATIONS: usize = 65_536;
/// The most bytes of partial response messages held while watching an Execute stream.
const MAX_WATCHED: usize = 16 << 20;

/// Where the proxy listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Listen {
    /// `HOST:PORT` (an IP address; `localhost` is 127.0.0.1) or `unix:PATH`.
    pub fn parse(text: &str) -> Result<Listen, ProxyError> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path.trim_start_matches("//"));
            if !path.is_absolute() {
                return Err(ProxyError::Listen(format!(
                    "{text}: the socket path must be absolute"
                )));
            }
            return Ok(Listen::Unix(path));
        }
        let text = text.strip_prefix("grpc://").unwrap_or(text);
        let text = match text.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => text.to_owned(),
        };
        text.parse().map(Listen::Tcp).map_err(|_| {
            ProxyError::Listen(format!(
                "{text}: expected IP:PORT (e.g. 127.0.0.1:8980) or unix:/PATH"
            ))
        })
    }
}

/// What the proxy forwards to and records into.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The upstream server: its URL, TLS options and extra headers (as `--remote` takes them).
    pub upstream: GrpcConfig,
    /// Where recordings go.
    pub record_dir: PathBuf,
    /// PEM files of a certificate (chain) and its key: clients then connect with TLS
    /// (`grpcs://`), TCP listeners only.
    pub listen_tls: Option<(PathBuf, PathBuf)>,
    /// What clients may make the proxy hold.
    pub limits: ProxyLimits,
}

impl ProxyConfig {
    /// Forward to `upstream`, record into `record_dir`, listen without TLS.
    pub fn new(upstream: GrpcConfig, record_dir: PathBuf) -> ProxyConfig {
        ProxyConfig { upstream, record_dir, listen_tls: None, limits: ProxyLimits::default() }
    }
}

/// A TLS acceptor for `cert` and `key` (PEM), offering HTTP/2 by ALPN as gRPC clients expect.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ProxyError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ServerConfig};
    let tls = |what: String| ProxyError::Tls(what);
    // Read whole, counted as read: a device or a pipe named as a certificate is held to 4 MiB.
    let read = |path: &std::path::Path| {
        sa_cas::read_bounded(path, 4 << 20).map_err(|err| tls(err.to_string()))
    };
    let cert_pem = read(cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls(format!("{}: no certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls(format!("{} and {}: {e}", cert.display(), key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address is malformed or cannot be bound.
    #[error("listen address {0}")]
    Listen(String),
    /// The listener's certificate or key cannot be used.
    #[error("listener TLS: {0}")]
    Tls(String),
    /// The upstream URL or its TLS options are invalid.
    #[error("upstream")]
    Upstream(#[source] sa_cas::CasError),
    /// The recording directory cannot be made, or the runtime cannot start.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The operating system's complaint.
        #[source]
        source: std::io::Error,
    },
}

/// Shared by every connection.
struct State {
    channel: tonic::transport::Channel,
    upstream: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    recorder: RecordWriter,
    /// Recorded calls open per invocation.
    activity: Arc<Activity>,
    /// Operation name → what its Execute was about, for WaitExecution.
    operations: Mutex<HashMap<String, Call>>,
    limits: ProxyLimits,
    /// Bytes of recorded requests buffered now.
    budget: Arc<Budget>,
    connections: Arc<Connections>,
    /// Accept failures (out of file descriptors) and refused connections, said once a while.
    accept_errors: Throttled,
    refused: Throttled,
}

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    activity: Arc<Activity>,
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Proxy {
    /// Binds `listen` and starts serving on a runtime of its own.
    pub fn start(listen: &Listen, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let io = |what: String| move |source| ProxyError::Io { what, source };
        let recorder = Recorder::new(&config.record_dir)
            .and_then(|recorder| RecordWriter::start(recorder, MAX_WAITING_LINES))
            .map_err(io(format!("recording directory {}", config.record_dir.display())))?;
        // One worker thread: a forwarded call is a few polls, and a hop between threads costs
        // more than they do (measured: +214 µs p50 with two workers, +144 to +166 µs with one,
        // and 40% less CPU per call; ByteStream as fast). The recorder writes on its own thread.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sa-proxy")
            .enable_all()
            .build()
            .map_err(io("starting the runtime".into()))?;
        let mut headers = Vec::new();
        for (key, value) in &config.upstream.headers {
            let name = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|_| ProxyError::Listen(format!("invalid header name {key:?}")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                ProxyError::Listen(format!("header {key} has an invalid value (not shown)"))
            })?;
            headers.push((name, value));
        }
        // Connected now where the upstream answers: the proxy then holds its upstream
        // connection before clients can take every file descriptor.
        let channel = runtime
            .block_on(sa_cas::warm_channel(&config.upstream))
            .map_err(ProxyError::Upstream)?;
        let activity = Arc::new(Activity::default());
        let state = Arc::new(State {
            channel,
            upstream: config.upstream.endpoint.clone(),
            headers,
            recorder,
            activity: activity.clone(),
            operations: Mutex::new(HashMap::new()),
            budget: Budget::new(config.limits.recorded_budget_bytes),
            connections: Connections::new(config.limits.max_connections),
            accept_errors: Throttled::new(std::time::Duration::from_secs(10)),
            refused: Throttled::new(std::time::Duration::from_secs(10)),
            limits: config.limits.clone(),
        });
        let acceptor = match &config.listen_tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        if acceptor.is_some() && matches!(listen, Listen::Unix(_)) {
            return Err(ProxyError::Tls("TLS is for TCP listeners only".into()));
        }
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let endpoint = runtime.block_on(async {
            match listen {
                Listen::Tcp(addr) => {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| ProxyError::Listen(format!("{addr}: {e}")))?;
                    let local = listener
                        .local_addr()
                        .map_err(|e| ProxyError::Listen(format!("{addr}: {e}")))?;
                    let scheme = if acceptor.is_some() { "grpcs" } else { "grpc" };
                    tokio::spawn(accept_tcp(listener, acceptor, state, stopped));
                    Ok::<_, ProxyError>(format!("{scheme}://{local}"))
                }
                Listen::Unix(path) => {
                    let listener = tokio::net::UnixListener::bind(path)
                        .map_err(|e| ProxyError::Listen(format!("{}: {e}", path.display())))?;
                    tokio::spawn(accept_unix(listener, state, stopped));
                    Ok(format!("unix:{}", path.display()))
                }
            }
        })?;
        Ok(Proxy { runtime: Some(runtime), endpoint, shutdown: Some(shutdown), activity })
    }

    /// Which invocations have recorded calls open, and since when each has been quiet.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// The URL clients use: `grpc://IP:PORT` or `unix:/PATH`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.block_on(std::future::pending::<()>());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut pause = AcceptPause::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                pause.failed(&state, &err).await;
                continue;
            }
        };
        pause.reset();
        let Some(admitted) = admit(&state) else { continue };
        let _ = stream.set_nodelay(true);
        match &acceptor {
            None => serve(hyper_util::rt::TokioIo::new(stream), state.clone(), admitted),
            Some(acceptor) => {
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    // A handshake that never finishes holds its place only so long.
                    let timeout = state.limits.handshake_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(hyper_util::rt::TokioIo::new(tls), state, admitted),
                        Ok(Err(err)) => tracing::debug!("TLS handshake with {peer}: {err}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer}: timed out"),
                    }
                });
            }
        }
    }
}

async fn accept_unix(
    listener: tokio::net::UnixListener,
    state: Arc<State>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut pause = AcceptPause::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                pause.reset();
                if let Some(admitted) = admit(&state) {
                    serve(hyper_util::rt::TokioIo::new(stream), state.clone(), admitted);
                }
            }
            Err(err) => pause.failed(&state, &err).await,
        }
    }
}

/// A place for a new connection, or `None` (the connection is dropped, said once a while)
/// when every place is taken by a busy connection.
fn admit(state: &Arc<State>) -> Option<Admitted> {
    let admitted = state.connections.admit();
    if admitted.is_none()
        && let Some(more) = state.refused.check()
    {
        tracing::warn!(
            "refusing connections: all {} connections have calls open ({more} more refused \
             since the last line)",
            state.limits.max_connections
        );
    }
    admitted
}

/// The pause after a failed accept: out of file descriptors (or another resource), the
/// listener would fail again at once, so the loop waits, 10 ms doubling to 1 s, and makes room
/// by closing the longest-idle connection; the failure is said once every 10 s, never in a
/// loop.
#[derive(Debug, Default)]
struct AcceptPause {
    next: Option<std::time::Duration>,
}

impl AcceptPause {
    async fn failed(&mut self, state: &State, err: &std::io::Error) {
        /// EMFILE and ENFILE (Linux): the process's or the system's file table is full.
        const OUT_OF_DESCRIPTORS: [i32; 2] = [24, 23];
        let out_of_descriptors =
            err.raw_os_error().is_some_and(|code| OUT_OF_DESCRIPTORS.contains(&code));
        let evicted = out_of_descriptors && state.connections.evict_idle();
        if let Some(more) = state.accept_errors.check() {
            tracing::warn!(
                "accepting a connection: {err}{}; pausing accepts ({more} more failures since \
                 the last line)",
                if evicted { "; closed the longest-idle connection" } else { "" }
            );
        }
        let pause = self.next.unwrap_or(std::time::Duration::from_millis(10));
        self.next = Some((pause * 2).min(std::time::Duration::from_secs(1)));
        tokio::time::sleep(pause).await;
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

fn serve<I>(io: I, state: Arc<State>, admitted: Admitted)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let conn = admitted.conn.clone();
        let limits = state.limits.clone();
        let service = {
            let conn = conn.clone();
            hyper::service::service_fn(move |request| {
                let guard = StreamGuard::open(&conn);
                handle(request, state.clone(), guard)
            })
        };
        let connection =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(limits.max_streams_per_connection)
                .max_header_list_size(limits.max_header_list_bytes)
                .keep_alive_interval(limits.keepalive_interval)
                .keep_alive_timeout(limits.keepalive_interval)
                .serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let tick = (limits.handshake_timeout.min(limits.idle_timeout) / 4)
            .clamp(std::time::Duration::from_millis(50), std::time::Duration::from_secs(1));
        let ended = loop {
            tokio::select! {
                ended = connection.as_mut() => break Some(ended),
                () = conn.close.notified() => break None,
                () = tokio::time::sleep(tick) => {
                    if conn.expired(limits.handshake_timeout, limits.idle_timeout) {
                        break None;
                    }
                }
            }
        };
        match ended {
            Some(Err(err)) => tracing::debug!("connection ended: {err}"),
            Some(Ok(())) => {}
            // A client that never opened a call: closed at once.
            None if !conn.ever_opened() => {}
            // Evicted or idle: GOAWAY, then a short grace for what is in flight, then closed.
            None => {
                connection.as_mut().graceful_shutdown();
                let grace = std::time::Duration::from_secs(1);
                let _ = tokio::time::timeout(grace, connection).await;
            }
        }
        drop(admitted);
    });
}

/// What a recorded call is about.
#[derive(Clone, Debug, Default)]
struct Call {
    kind: &'static str,
    action: Option<String>,
    instance_name: String,
    metadata: Map<String, Value>,
}

impl Call {
    /// Its invocation's recording file stem.
    fn stem(&self) -> String {
        crate::recording::file_stem(self.metadata.get("tool_invocation_id").and_then(Value::as_str))
    }
}

fn status_response(code: tonic::Code, message: String) -> Response<Body> {
    tonic::Status::new(code, message).into_http()
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<State>,
    guard: StreamGuard,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let (mut parts, incoming) = request.into_parts();
    for (name, value) in &state.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    let recorded = matches!(path.as_str(), EXECUTE | WAIT_EXECUTION | GET_ACTION_RESULT);
    let mut share = Share::new(&state.budget);
    let (body, call) = if recorded {
        let bytes = match read_recorded(incoming, &state, &mut share).await {
            Ok(bytes) => bytes,
            Err(status) => return Ok(guarded(status.into_http(), guard, share)),
        };
        let call = describe(&path, &bytes, &parts.headers, &state);
        if let Some(call) = &call {
            state.activity.begin(&call.stem());
        }
        (Body::new(http_body_util::Full::new(bytes)), call)
    } else {
        (Body::new(incoming), None)
    };
    // Recorded as cancelled if the client goes away before the upstream answers.
    let mut pending = Pending { call, state: state.clone() };
    let upstream_request = Request::from_parts(parts, body);
    let mut channel = state.channel.clone();
    let response = match channel.ready().await {
        Ok(ready) => ready.call(upstream_request).await,
        Err(err) => Err(err),
    };
    let call = pending.call.take();
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            let response = status_response(
                tonic::Code::Unavailable,
                format!("sa proxy: upstream {}: {text}", state.upstream),
            );
            return Ok(guarded(finish_early(call, &state, response), guard, share));
        }
    };
    let response = match call {
        None => response,
        Some(call) => {
            let header_status = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            let watched = Watched {
                inner: body,
                buffer: BytesMut::new(),
                call,
                state,
                status: header_status,
                outcome: None,
                recorded: false,
            };
            Response::from_parts(parts, Body::new(watched))
        }
    };
    Ok(guarded(response, guard, share))
}

/// Reads a recorded call's request whole: at most `max_recorded_request_bytes`, each byte
/// taken from the shared budget as it arrives (a client that sends much and never ends holds
/// no more than the budget lets it).
async fn read_recorded(
    mut incoming: Incoming,
    state: &State,
    share: &mut Share,
) -> Result<Bytes, tonic::Status> {
    let max = state.limits.max_recorded_request_bytes;
    let mut bytes = BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|err| {
            tonic::Status::cancelled(format!("sa proxy: reading the request: {err}"))
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > max {
            return Err(tonic::Status::resource_exhausted(format!(
                "sa proxy: a recorded request may have at most {max} bytes"
            )));
        }
        if !state.budget.take(share, data.len()) {
            return Err(tonic::Status::resource_exhausted(
                "sa proxy: too many recorded requests in flight; retry",
            ));
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes.freeze())
}

/// A recorded call waiting for the upstream's answer: dropped with its call still in it (the
/// client went away, the proxy stopped), it is recorded as CANCELLED.
struct Pending {
    call: Option<Call>,
    state: Arc<State>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            write_line(&self.state, &call, tonic::Code::Cancelled as i32, false, None);
        }
    }
}

/// The response with the stream's guard and budget share in its body: the stream counts as
/// open, and its recorded request as buffered, until the body ends or is dropped.
fn guarded(response: Response<Body>, guard: StreamGuard, share: Share) -> Response<Body> {
    let (parts, inner) = response.into_parts();
    Response::from_parts(parts, Body::new(Guarded { inner, _guard: guard, _share: share }))
}

/// A body that holds its stream's [`StreamGuard`] and [`Share`].
struct Guarded {
    inner: Body,
    _guard: StreamGuard,
    _share: Share,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A call that never reached the upstream is recorded with the status it got.
fn finish_early(
    call: Option<Call>,
    state: &Arc<State>,
    response: Response<Body>,
) -> Response<Body> {
    if let Some(call) = call {
        let status = grpc_status(response.headers()).unwrap_or(tonic::Code::Unknown as i32);
        write_line(state, &call, status, false, None);
    }
    response
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Decodes the one message of a unary gRPC request body.
fn unary_message(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < 5 || bytes[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    bytes.get(5..5 + len)
}

fn digest_text(digest: &Option<sa_proto::reapi::Digest>) -> Option<String> {
    digest.as_ref().map(|d| format!("{}/{}", d.hash, d.size_bytes))
}

fn describe(path: &str, body: &[u8], headers: &HeaderMap, state: &State) -> Option<Call> {
    let message = unary_message(body)?;
    let metadata = request_metadata(headers);
    match path {
        EXECUTE => {
            let request = ExecuteRequest::decode(message).ok()?;
            Some(Call {
                kind: "execute",
                action: digest_text(&request.action_digest),
                instance_name: request.instance_name,
                metadata,
            })
        }
        GET_ACTION_RESULT => {
            let request = GetActionResultRequest::decode(message).ok()?;
            Some(Call {
                kind: "get_action_result",
                action: digest_text(&request.action_digest),
                instance_name: request.instance_name,
                metadata,
            })
        }
        WAIT_EXECUTION => {
            let request = WaitExecutionRequest::decode(message).ok()?;
            let operations = state.operations.lock().unwrap_or_else(|e| e.into_inner());
            let mut call = operations.get(&request.name)?.clone();
            if !metadata.is_empty() {
                call.metadata = metadata;
            }
            Some(call)
        }
        _ => None,
    }
}

/// The client's `RequestMetadata`, as the recording's fields.
fn request_metadata(headers: &HeaderMap) -> Map<String, Value> {
    use base64::Engine;
    let mut fields = Map::new();
    let Some(value) = headers.get(METADATA_HEADER) else { return fields };
    let text = value.as_bytes();
    let trimmed: Vec<u8> = text.iter().copied().filter(|b| *b != b'=').collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(&trimmed) else {
        return fields;
    };
    let Ok(metadata) = RequestMetadata::decode(&bytes[..]) else { return fields };
    let mut put = |key: &str, value: String| {
        if !value.is_empty() {
            fields.insert(key.into(), value.into());
        }
    };
    if let Some(tool) = metadata.tool_details {
        put("tool_name", tool.tool_name);
        put("tool_version", tool.tool_version);
    }
    put("tool_invocation_id", metadata.tool_invocation_id);
    put("correlated_invocations_id", metadata.correlated_invocations_id);
    put("action_mnemonic", metadata.action_mnemonic);
    put("target_id", metadata.target_id);
    put("action_id", metadata.action_id);
    fields
}

/// `2026-12-02T10:57:33.123Z`.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Records a call that ended: every call `describe` gave comes here exactly once (its
/// `Pending`, `finish_early` or `Watched`).
fn write_line(state: &State, call: &Call, status: i32, cached: bool, exit_code: Option<i32>) {
    state.activity.end(&call.stem());
    let Some(action) = &call.action else { return };
    let mut line = Map::new();
    line.insert("time".into(), now_rfc3339().into());
    line.insert("kind".into(), call.kind.into());
    line.insert("action".into(), action.clone().into());
    line.insert("instance_name".into(), call.instance_name.clone().into());
    line.insert("cached".into(), cached.into());
    line.insert("status".into(), status.into());
    if let Some(exit_code) = exit_code {
        line.insert("exit_code".into(), exit_code.into());
    }
    for (key, value) in &call.metadata {
        line.insert(key.clone(), value.clone());
    }
    let invocation = call.metadata.get("tool_invocation_id").and_then(Value::as_str);
    // Handed to the writing thread: no request waits on the file system.
    state.recorder.submit(invocation, Value::Object(line));
}

/// The outcome an Execute stream's final Operation carried: status code, cached flag, and
/// the command's exit code when there is a result.
type Outcome = (i32, bool, Option<i32>);

/// The response body of a recorded call: passes every frame on as it comes, watches the
/// messages (Execute) and the status (all), and records the call once when it ends.
struct Watched {
    inner: Body,
    buffer: BytesMut,
    call: Call,
    state: Arc<State>,
    status: Option<i32>,
    outcome: Option<Outcome>,
    recorded: bool,
}

impl Watched {
    fn feed(&mut self, data: &Bytes) {
        if self.call.kind != "execute" || self.buffer.len() + data.len() > MAX_WATCHED {
            return;
        }
        self.buffer.extend_from_slice(data);
        while self.buffer.len() >= 5 {
            let len = u32::from_be_bytes([
                self.buffer[1],
                self.buffer[2],
                self.buffer[3],
                self.buffer[4],
            ]) as usize;
            if self.buffer.len() < 5 + len {
                break;
            }
            let compressed = self.buffer[0] != 0;
            self.buffer.advance(5);
            let message = self.buffer.split_to(len);
            if compressed {
                continue;
            }
            if let Ok(operation) = Operation::decode(&message[..]) {
                self.observe(operation);
            }
        }
    }

    fn observe(&mut self, operation: Operation) {
        if !operation.name.is_empty() && self.call.kind == "execute" {
            let mut operations = self.state.operations.lock().unwrap_or_else(|e| e.into_inner());
            // Operations whose client never came back are forgotten past a bound.
            if operations.len() >= MAX_OPERATIONS && !operations.contains_key(&operation.name) {
                operations.clear();
            }
            operations.entry(operation.name.clone()).or_insert_with(|| self.call.clone());
        }
        if !operation.done {
            return;
        }
        self.outcome = Some(match operation.result {
            Some(operation::Result::Error(status)) => (status.code, false, None),
            Some(operation::Result::Response(any)) => match ExecuteResponse::decode(&any.value[..])
            {
                Ok(response) => (
                    response.status.map_or(0, |s| s.code),
                    response.cached_result,
                    response.result.map(|r| r.exit_code),
                ),
                Err(_) => (tonic::Code::Unknown as i32, false, None),
            },
            None => (tonic::Code::Unknown as i32, false, None),
        });
        if !operation.name.is_empty() {
            let mut operations = self.state.operations.lock().unwrap_or_else(|e| e.into_inner());
            operations.remove(&operation.name);
        }
    }

    /// Records the call: `ended` is false when the client went away first.
    fn record(&mut self, ended: bool) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let grpc = self.status.unwrap_or(if ended {
            tonic::Code::Unknown as i32
        } else {
            tonic::Code::Cancelled as i32
        });
        match self.call.kind {
            "get_action_result" => write_line(&self.state, &self.call, grpc, grpc == 0, None),
            // The final Operation is the outcome, whether or not the trailers came after it: a
            // client may drop the stream once it has the result. A stream that failed is
            // recorded with its code; one cut before any outcome is cancelled (its
            // WaitExecution, if the client sends one, is recorded when it finishes).
            _ => match (self.outcome, self.status) {
                (Some((code, cached, exit)), None | Some(0)) => {
                    write_line(&self.state, &self.call, code, cached, exit)
                }
                (_, Some(code)) if code != 0 => {
                    write_line(&self.state, &self.call, code, false, None)
                }
                // No outcome: cut (CANCELLED), or ended without one (UNKNOWN).
                _ => {
                    let code = if grpc == 0 { tonic::Code::Unknown as i32 } else { grpc };
                    write_line(&self.state, &self.call, code, false, None)
                }
            },
        }
    }
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.feed(&data);
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = grpc_status(trailers)
                {
                    self.status = Some(status);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                self.status = Some(status.code() as i32);
                self.record(true);
            }
            Poll::Ready(None) => self.record(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // The client went away (or the connection broke) before the end.
        let ended = self.status.is_some();
        self.record(ended);
    }
}
