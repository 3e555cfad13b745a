//! [`GrpcConfig`]: how to reach a REAPI server.

use std::path::PathBuf;
use std::time::Duration;

use crate::digest::DigestFunction;

/// How to reach a REAPI server.
#[derive(Clone)]
pub struct GrpcConfig {
    /// `grpc://host:port`, `grpcs://host:port` or `unix:/path/to/socket`.
    pub endpoint: String,
    /// The REAPI instance name ("" for none).
    pub instance_name: String,
    /// Extra request headers, such as `authorization`; values never appear in errors or logs.
    pub headers: Vec<(String, String)>,
    /// PEM file of a CA to trust for `grpcs://` (besides the system roots).
    pub tls_ca_cert: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for mutual TLS.
    pub tls_client_identity: Option<(PathBuf, PathBuf)>,
    /// The digest function to use; the server must support it.
    pub digest_function: DigestFunction,
    /// The most RPCs in flight at once.
    pub max_concurrent_rpcs: usize,
    /// Deadline of one attempt of one RPC.
    pub rpc_timeout: Duration,
    /// Deadline of establishing the connection.
    pub connect_timeout: Duration,
    /// Retries after the first attempt, for retryable codes.
    pub max_retries: u32,
    /// First backoff delay; doubles each retry, capped at 5 s.
    pub retry_delay: Duration,
}

impl std::fmt::Debug for GrpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are secrets (tokens): only their names are shown.
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, _)| (k.as_str(), "<redacted>")).collect();
        f.debug_struct("GrpcConfig")
            .field("endpoint", &self.endpoint)
            .field("instance_name", &self.instance_name)
            .field("headers", &headers)
            .field("tls_ca_cert", &self.tls_ca_cert)
            .field("tls_client_identity", &self.tls_client_identity)
            .field("digest_function", &self.digest_function)
            .field("max_concurrent_rpcs", &self.max_concurrent_rpcs)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_delay", &self.retry_delay)
            .finish()
    }
}

impl GrpcConfig {
    /// The defaults for `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        GrpcConfig {
            endpoint: endpoint.into(),
            instance_name: String::new(),
            headers: Vec::new(),
            tls_ca_cert: None,
            tls_client_identity: None,
            digest_function: DigestFunction::Sha256,
            max_concurrent_rpcs: 16,
            rpc_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            retry_delay: Duration::from_millis(100),
        }
    }
}
