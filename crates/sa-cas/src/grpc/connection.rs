//! [`GrpcConnection`]: a channel to a REAPI server (TCP, TLS or a unix socket), with the
//! configured headers, deadline and runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::Request;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::digest::DigestFunction;
use crate::error::CasError;

use super::retry::is_transient_connect;
use super::{GrpcConfig, Retry, RetryPolicy};

/// The largest PEM file (a CA bundle, a certificate chain, a key) read for TLS.
const MAX_PEM_BYTES: u64 = 4 << 20;
use crate::error::error_chain;

/// A connection to a REAPI server: its channel, the configured headers and deadline, and the
/// runtime its calls run on. [`GrpcCas`](super::GrpcCas) is built on one; services it does not wrap (the
/// Execution service of `sa_exec::RemoteExecutor`) use it directly. Cheap to clone; the
/// runtime lives as long as any clone.
#[derive(Clone)]
pub struct GrpcConnection {
    pub(super) runtime: Arc<tokio::runtime::Runtime>,
    pub(super) channel: Channel,
    pub(super) config: Arc<GrpcConfig>,
    pub(super) headers: Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>,
}

impl std::fmt::Debug for GrpcConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcConnection")
            .field("endpoint", &self.config.endpoint)
            .field("instance_name", &self.config.instance_name)
            .finish_non_exhaustive()
    }
}

impl GrpcConnection {
    /// Checks the headers, starts a runtime and connects (retrying while the server refuses
    /// connections, as one that is starting does).
    pub fn open(config: GrpcConfig) -> Result<GrpcConnection, CasError> {
        let mut headers = Vec::new();
        for (key, value) in &config.headers {
            let key = AsciiMetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|_| connect_error(&config, format!("invalid header name {key:?}")))?;
            let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| {
                connect_error(&config, format!("header {key} has an invalid value (not shown)"))
            })?;
            headers.push((key, value));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sa-grpc")
            .enable_all()
            .build()
            .map_err(|err| connect_error(&config, format!("starting the runtime: {err}")))?;
        let channel = runtime.block_on(open_channel(&config))?;
        Ok(GrpcConnection {
            runtime: Arc::new(runtime),
            channel,
            config: Arc::new(config),
            headers: Arc::new(headers),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GrpcConfig {
        &self.config
    }

    /// The channel (it reconnects by itself after a failure).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The runtime the connection's calls run on: spawn on it, or block on it from a thread
    /// that is not running async code.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Wraps a message in a request with the configured headers and the per-RPC deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        make_request(&self.headers, self.config.rpc_timeout, message)
    }

    /// The `digest_function` request field: unset for SHA-256, which every server assumes
    /// (and some reject when named).
    pub fn function_field(&self) -> i32 {
        match self.config.digest_function {
            DigestFunction::Sha256 => 0,
            other => other.to_proto() as i32,
        }
    }
}

pub(super) fn connect_error(config: &GrpcConfig, reason: impl std::fmt::Display) -> CasError {
    let mut reason = reason.to_string();
    // rustls's words for a server that answered the TLS handshake in plaintext.
    if config.endpoint.starts_with("grpcs://")
        && (reason.contains("InvalidContentType") || reason.contains("corrupt message"))
    {
        reason = format!(
            "the server does not speak TLS (a plaintext server? then use grpc://): {reason}"
        );
    }
    CasError::Connect { endpoint: config.endpoint.clone(), reason }
}

pub(super) fn make_request<T>(
    headers: &[(AsciiMetadataKey, AsciiMetadataValue)],
    timeout: Duration,
    message: T,
) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    for (key, value) in headers {
        request.metadata_mut().insert(key.clone(), value.clone());
    }
    request
}

/// Where a channel goes: a TCP endpoint (plain or TLS), or a Unix socket.
enum Target {
    Tcp(Endpoint),
    Unix(Endpoint, PathBuf),
}

fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// A channel to `config`'s endpoint that connects on first use (and again after a failure),
/// so a server that is down now is an `UNAVAILABLE` call, not an error here. Must be called
/// within a tokio runtime. For forwarding (`sa proxy`): no capabilities are read.
pub fn lazy_channel(config: &GrpcConfig) -> Result<Channel, CasError> {
    Ok(match target(config)? {
        Target::Tcp(endpoint) => endpoint.connect_lazy(),
        Target::Unix(endpoint, path) => endpoint.connect_with_connector_lazy(unix_connector(path)),
    })
}

/// [`lazy_channel`], connected now when the server answers within the connect timeout (one
/// attempt, no retries): a forwarder that holds its upstream connection from the start does
/// not need a new descriptor for it later, when clients may have taken them all. A server
/// that is down or slow now gives the lazy channel, which connects on first use.
pub async fn warm_channel(config: &GrpcConfig) -> Result<Channel, CasError> {
    let connected = match target(config)? {
        Target::Tcp(endpoint) => {
            tokio::time::timeout(config.connect_timeout, endpoint.connect()).await
        }
        Target::Unix(endpoint, path) => {
            tokio::time::timeout(
                config.connect_timeout,
                endpoint.connect_with_connector(unix_connector(path)),
            )
            .await
        }
    };
    match connected {
        Ok(Ok(channel)) => Ok(channel),
        _ => lazy_channel(config),
    }
}

fn target(config: &GrpcConfig) -> Result<Target, CasError> {
    let endpoint_text = config.endpoint.as_str();
    if let Some(path) = endpoint_text.strip_prefix("unix:") {
        let path = PathBuf::from(path.trim_start_matches("//"));
        if !path.is_absolute() {
            return Err(connect_error(config, "unix socket path must be absolute"));
        }
        let endpoint =
            Endpoint::from_static("http://localhost").connect_timeout(config.connect_timeout);
        return Ok(Target::Unix(endpoint, path));
    }
    let (scheme, host_port) = if let Some(rest) = endpoint_text.strip_prefix("grpc://") {
        ("http", rest)
    } else if let Some(rest) = endpoint_text.strip_prefix("grpcs://") {
        ("https", rest)
    } else {
        return Err(connect_error(
            config,
            "expected grpc://HOST:PORT, grpcs://HOST:PORT or unix:/PATH",
        ));
    };
    if host_port.is_empty() || host_port.contains('/') {
        return Err(connect_error(config, "expected HOST:PORT after the scheme"));
    }
    match host_port.rsplit_once(':').map(|(_, port)| port.parse::<u32>()) {
        Some(Ok(port)) if (1..=65535).contains(&port) => {}
        Some(Ok(port)) => {
            return Err(connect_error(config, format!("port {port} is out of range (1-65535)")));
        }
        _ => return Err(connect_error(config, "expected HOST:PORT with a numeric port")),
    }
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))
        .map_err(|err| connect_error(config, err))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true);
    if scheme == "https" {
        let host = host_port.rsplit_once(':').map(|(h, _)| h).unwrap_or(host_port);
        let mut tls =
            ClientTlsConfig::new().domain_name(host.trim_matches(['[', ']'])).with_native_roots();
        // PEM files are read whole: counted as they are read (a device or a pipe is held to
        // the limit too).
        let pem = |path: &std::path::Path| {
            crate::read_bounded(path, MAX_PEM_BYTES)
                .map_err(|err| connect_error(config, err.to_string()))
        };
        if let Some(ca) = &config.tls_ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(pem(ca)?));
        }
        if let Some((cert, key)) = &config.tls_client_identity {
            tls = tls.identity(Identity::from_pem(pem(cert)?, pem(key)?));
        }
        endpoint =
            endpoint.tls_config(tls).map_err(|err| connect_error(config, error_chain(&err)))?;
    } else if config.tls_ca_cert.is_some() || config.tls_client_identity.is_some() {
        return Err(connect_error(config, "TLS options need a grpcs:// endpoint"));
    }
    Ok(Target::Tcp(endpoint))
}

async fn open_channel(config: &GrpcConfig) -> Result<Channel, CasError> {
    let endpoint = match target(config)? {
        Target::Unix(endpoint, path) => {
            return endpoint
                .connect_with_connector(unix_connector(path))
                .await
                .map_err(|err| connect_error(config, error_chain(&err)));
        }
        Target::Tcp(endpoint) => endpoint,
    };
    // Refused, reset or aborted while connecting: a server starting or restarting. Retry with
    // the calls' backoff; anything else (TLS verification, a bad address) is final.
    let mut retry = Retry::new(RetryPolicy::calls(config));
    loop {
        let err = match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(err) => err,
        };
        let Some(delay) = retry.after_failure(is_transient_connect(&err)) else {
            let reason = format!("{}{}", error_chain(&err), retry.attempts_note());
            return Err(connect_error(config, reason));
        };
        tracing::warn!(
            "connecting to {}: {}; retrying ({}, next in {delay:.1?})",
            config.endpoint,
            error_chain(&err),
            retry.progress()
        );
        tokio::time::sleep(delay).await;
    }
}
