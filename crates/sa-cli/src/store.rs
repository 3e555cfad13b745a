//! Store selection from the command line: a local casd-layout directory or a REAPI server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sa_cas::{
    DigestFunction, GrpcCas, GrpcConfig, Limited, LocalCas, LocalCasConfig, Metered, Store,
};

use crate::args::StoreArgs;

/// The store a command works on, with in-memory reads bounded by `--max-blob-bytes` and
/// metered for `--stats`.
pub(crate) struct Opened {
    pub(crate) store: Metered<Limited<Arc<dyn Store>>>,
    pub(crate) grpc: Option<Arc<GrpcCas>>,
    pub(crate) description: String,
}

impl Opened {
    pub(crate) fn new(
        args: &StoreArgs,
        store: Arc<dyn Store>,
        grpc: Option<Arc<GrpcCas>>,
        description: String,
    ) -> Opened {
        let store = Metered::new(Limited::new(store, args.limits.max_blob_bytes));
        Opened { store, grpc, description }
    }
}

/// The default local store: `${XDG_CACHE_HOME:-~/.cache}/speculative-actions`.
pub(crate) fn default_cas_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("speculative-actions"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("speculative-actions")),
        None => bail!("neither XDG_CACHE_HOME nor HOME is set: pass --cas DIR"),
    }
}

pub(crate) fn open_local(args: &StoreArgs) -> Result<Arc<LocalCas>> {
    let dir = match &args.cas {
        Some(dir) => dir.clone(),
        None => default_cas_dir()?,
    };
    let config = LocalCasConfig { digest_function: args.digest_function, verify_reads: true };
    let cas = LocalCas::open(&dir, config)
        .with_context(|| format!("opening the local store {}", dir.display()))?;
    Ok(Arc::new(cas))
}

pub(crate) fn grpc_config(args: &StoreArgs, endpoint: &str) -> Result<GrpcConfig> {
    let mut config = GrpcConfig::new(endpoint);
    config.instance_name = args.instance_name.clone();
    config.digest_function = args.digest_function;
    config.max_concurrent_rpcs = args.limits.max_in_flight_rpcs as usize;
    config.rpc_timeout = std::time::Duration::from_secs(args.rpc_timeout);
    for header in &args.remote_header {
        let Some((key, value)) = header.split_once('=') else {
            crate::exit::usage!(
                "--remote-header {:?}: expected KEY=VALUE",
                header.split('=').next().unwrap_or_default()
            );
        };
        config.headers.push((key.to_owned(), value.to_owned()));
    }
    config.tls_ca_cert = args.tls_ca_cert.clone();
    config.tls_client_identity = match (&args.tls_client_cert, &args.tls_client_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => crate::exit::usage!("--tls-client-cert and --tls-client-key go together"),
    };
    Ok(config)
}

pub(crate) fn connect(args: &StoreArgs, endpoint: &str) -> Result<Arc<GrpcCas>> {
    let config = grpc_config(args, endpoint)?;
    // The error names the endpoint already.
    Ok(Arc::new(GrpcCas::connect(config)?))
}

/// Like [`open`], for commands that only read: a local store that does not exist is an error
/// (they would create an empty one only to report every blob missing).
pub(crate) fn open_existing(args: &StoreArgs) -> Result<Opened> {
    if args.remote.is_none() {
        let dir = match &args.cas {
            Some(dir) => dir.clone(),
            None => default_cas_dir()?,
        };
        if !dir.join("cas").is_dir() {
            bail!(
                "no store at {} (--cas; commands that only read do not create one)",
                dir.display()
            );
        }
    }
    open(args)
}

/// Opens `--remote` when given, else the local store.
pub(crate) fn open(args: &StoreArgs) -> Result<Opened> {
    match &args.remote {
        Some(endpoint) => open_remote(args, endpoint),
        None => open_local_store(args),
    }
}

/// The REAPI server at `endpoint` as a store.
pub(crate) fn open_remote(args: &StoreArgs, endpoint: &str) -> Result<Opened> {
    let grpc = connect(args, endpoint)?;
    let store: Arc<dyn Store> = grpc.clone();
    Ok(Opened::new(args, store, Some(grpc), endpoint.to_owned()))
}

/// The local store (`--cas`, or the default directory), whatever `--remote` says.
pub(crate) fn open_local_store(args: &StoreArgs) -> Result<Opened> {
    let local = open_local(args)?;
    let description = local.root().display().to_string();
    Ok(Opened::new(args, local, None, description))
}

pub(crate) fn parse_function(text: &str) -> Result<DigestFunction, String> {
    text.parse().map_err(|_| format!("{text:?} is not sha256 or blake3"))
}
