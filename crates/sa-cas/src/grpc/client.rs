//! [`GrpcCas`]: the CAS, ByteStream, ActionCache and Capabilities services behind the store
//! traits.

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sa_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use sa_proto::google::bytestream::{ReadRequest, WriteRequest};
use sa_proto::reapi::action_cache_client::ActionCacheClient;
use sa_proto::reapi::batch_update_blobs_request;
use sa_proto::reapi::capabilities_client::CapabilitiesClient;
use sa_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use sa_proto::reapi::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest,
    UpdateActionResultRequest,
};
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::digest::{Digest, DigestFunction};
use crate::error::{CasError, io_error};
use crate::merkle::batch_ranges;

use super::connection::connect_error;
use super::{
    BATCH_HEADROOM, CHUNK, Exhausted, FIND_MISSING_CHUNK, GrpcConfig, GrpcConnection, MAX_MESSAGE,
    RetryPolicy, retry_call,
};
use crate::store::{ActionCache, Blob, Cas, check_content, check_function, to_look_up};

/// A REAPI server as a store. See the module documentation.
pub struct GrpcCas {
    connection: GrpcConnection,
    runtime: Arc<tokio::runtime::Runtime>,
    channel: Channel,
    config: GrpcConfig,
    semaphore: Arc<Semaphore>,
    max_batch_bytes: u64,
    rpcs: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for GrpcCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are secrets: only their names are shown.
        f.debug_struct("GrpcCas")
            .field("endpoint", &self.config.endpoint)
            .field("instance_name", &self.config.instance_name)
            .field(
                "headers",
                &self.connection.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("digest_function", &self.config.digest_function)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .finish_non_exhaustive()
    }
}

impl GrpcCas {
    /// Connects, reads the server's capabilities, and checks that it supports the digest
    /// function.
    pub fn connect(config: GrpcConfig) -> Result<GrpcCas, CasError> {
        let connection = GrpcConnection::open(config.clone())?;
        let semaphore = Arc::new(Semaphore::new(config.max_concurrent_rpcs.max(1)));
        let mut cas = GrpcCas {
            runtime: connection.runtime.clone(),
            channel: connection.channel(),
            connection,
            config,
            semaphore,
            max_batch_bytes: MAX_MESSAGE - BATCH_HEADROOM,
            rpcs: std::sync::atomic::AtomicU64::new(0),
        };
        let capabilities = cas.call("GetCapabilities", |channel| {
            let request = cas.request(GetCapabilitiesRequest {
                instance_name: cas.config.instance_name.clone(),
            });
            async move { CapabilitiesClient::new(channel).get_capabilities(request).await }
        });
        let capabilities = capabilities.map_err(|err| match err {
            CasError::Rpc { code, message, .. } => {
                connect_error(&cas.config, format!("GetCapabilities: {code:?}: {message}"))
            }
            other => other,
        })?;
        let cache = capabilities.cache_capabilities.clone().unwrap_or_default();
        let wanted = cas.config.digest_function.to_proto() as i32;
        let supported = if cache.digest_functions.is_empty() {
            // Servers before REAPI 2.? list nothing: SHA-256 is the only safe assumption.
            wanted == DigestFunction::Sha256.to_proto() as i32
        } else {
            cache.digest_functions.contains(&wanted)
        };
        if !supported {
            let names: Vec<&str> = cache
                .digest_functions
                .iter()
                .map(|f| {
                    sa_proto::reapi::digest_function::Value::try_from(*f)
                        .map_or("an unknown function", |v| v.as_str_name())
                })
                .collect();
            return Err(CasError::UnsupportedDigestFunction(format!(
                "{} (server {} supports {})",
                cas.config.digest_function,
                cas.config.endpoint,
                names.join(", ")
            )));
        }
        let limit = u64::try_from(cache.max_batch_total_size_bytes).unwrap_or(0);
        let limit = if limit == 0 { MAX_MESSAGE } else { limit.min(MAX_MESSAGE) };
        cas.max_batch_bytes = limit.saturating_sub(BATCH_HEADROOM).max(limit / 2);
        Ok(cas)
    }

    /// RPC attempts made so far (retries included).
    pub fn rpc_count(&self) -> u64 {
        self.rpcs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The connection, for services this type does not wrap (Execution).
    pub fn connection(&self) -> &GrpcConnection {
        &self.connection
    }

    /// The configuration.
    pub fn config(&self) -> &GrpcConfig {
        &self.config
    }

    fn request<T>(&self, message: T) -> Request<T> {
        self.connection.request(message)
    }

    /// The whole tree below `root` through `GetTree`, following pages. Directories come without
    /// their digests (the server's encoding is not ours to trust), so the level-by-level
    /// [`crate::merkle::fetch_tree`] is what the rest of the project uses.
    pub fn get_tree(&self, root: &Digest) -> Result<Vec<Directory>, CasError> {
        check_function(self.config.digest_function, root)?;
        let mut directories = Vec::new();
        let mut page_token = String::new();
        loop {
            let token = page_token.clone();
            let pages = self.call("GetTree", |channel| {
                let request = self.request(GetTreeRequest {
                    instance_name: self.config.instance_name.clone(),
                    root_digest: Some(root.to_proto()),
                    page_size: 0,
                    page_token: token.clone(),
                    digest_function: self.function_field(),
                });
                async move {
                    let mut stream = ContentAddressableStorageClient::new(channel)
                        .get_tree(request)
                        .await?
                        .into_inner();
                    let mut pages = Vec::new();
                    while let Some(page) = stream.message().await? {
                        pages.push(page);
                    }
                    Ok(tonic::Response::new(pages))
                }
            })?;
            let mut next = String::new();
            for page in pages {
                directories.extend(page.directories);
                next = page.next_page_token;
            }
            if next.is_empty() {
                return Ok(directories);
            }
            page_token = next;
        }
    }

    fn function_field(&self) -> i32 {
        self.connection.function_field()
    }

    /// `[instance/]blobs/[function/]hash/size`, or with `uploads/<uuid>/` for writes.
    fn resource_name(&self, digest: &Digest, upload: bool) -> String {
        let mut name = String::new();
        if !self.config.instance_name.is_empty() {
            name.push_str(&self.config.instance_name);
            name.push('/');
        }
        if upload {
            name.push_str(&format!("uploads/{}/", uuid::Uuid::new_v4()));
        }
        name.push_str("blobs/");
        if digest.function() != DigestFunction::Sha256 {
            name.push_str(digest.function().name());
            name.push('/');
        }
        name.push_str(&format!("{}/{}", digest.hash_hex(), digest.size()));
        name
    }

    /// Runs one RPC with the semaphore, the deadline and retries; `make` builds one attempt of
    /// the call from a channel (and must build its request anew: retries call it again).
    fn call<T, F, Fut>(&self, operation: &'static str, make: F) -> Result<T, CasError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.runtime.block_on(self.call_async(operation, make))
    }

    async fn call_async<T, F, Fut>(&self, operation: &'static str, make: F) -> Result<T, CasError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let attempt = || async {
            let permit = self.semaphore.acquire().await.expect("the semaphore is never closed");
            self.rpcs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result =
                tokio::time::timeout(self.config.rpc_timeout, make(self.channel.clone())).await;
            drop(permit);
            match result {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.config.rpc_timeout
                ))),
            }
        };
        retry_call(RetryPolicy::calls(&self.config), operation, attempt).await.map_err(
            |Exhausted { status, attempts_note }| CasError::Rpc {
                operation,
                code: status.code(),
                message: format!("{}{attempts_note}", status.message()),
            },
        )
    }

    fn batch_read(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> {
        let response =
            self.call("BatchReadBlobs", |channel| {
                let request = self.request(BatchReadBlobsRequest {
                    instance_name: self.config.instance_name.clone(),
                    digests: digests.iter().map(Digest::to_proto).collect(),
                    acceptable_compressors: Vec::new(),
                    digest_function: self.function_field(),
                });
                async move {
                    ContentAddressableStorageClient::new(channel).batch_read_blobs(request).await
                }
            })?;
        let mut found = std::collections::HashMap::with_capacity(response.responses.len());
        for item in response.responses {
            let Some(proto) = item.digest.as_ref() else { continue };
            let Ok(digest) = Digest::from_proto(self.config.digest_function, proto) else {
                continue;
            };
            found.insert(digest, item);
        }
        digests
            .iter()
            .map(|digest| {
                let item = found.get(digest).ok_or_else(|| CasError::Rpc {
                    operation: "BatchReadBlobs",
                    code: Code::Internal,
                    message: format!("the response has no entry for {digest}"),
                })?;
                let code = item.status.as_ref().map(|s| s.code).unwrap_or(0);
                match Code::from(code) {
                    Code::Ok => {}
                    Code::NotFound => return Err(CasError::NotFound(*digest)),
                    other => {
                        let message =
                            item.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
                        return Err(CasError::Rpc {
                            operation: "BatchReadBlobs",
                            code: other,
                            message: format!("{digest}: {message}"),
                        });
                    }
                }
                check_content(digest, &item.data, true)?;
                Ok(item.data.clone())
            })
            .collect()
    }

    fn batch_update(&self, blobs: &[Blob]) -> Result<(), CasError> {
        let response = self.call("BatchUpdateBlobs", |channel| {
            let request = self.request(BatchUpdateBlobsRequest {
                instance_name: self.config.instance_name.clone(),
                requests: blobs
                    .iter()
                    .map(|blob| batch_update_blobs_request::Request {
                        digest: Some(blob.digest().to_proto()),
                        data: blob.data().clone(),
                        compressor: 0,
                    })
                    .collect(),
                digest_function: self.function_field(),
            });
            async move {
                ContentAddressableStorageClient::new(channel).batch_update_blobs(request).await
            }
        })?;
        for item in response.responses {
            let code = item.status.as_ref().map(|s| s.code).unwrap_or(0);
            if code != 0 {
                let digest =
                    item.digest.map(|d| format!("{}/{}", d.hash, d.size_bytes)).unwrap_or_default();
                let message = item.status.map(|s| s.message).unwrap_or_default();
                return Err(CasError::Rpc {
                    operation: "BatchUpdateBlobs",
                    code: Code::from(code),
                    message: format!("{digest}: {message}"),
                });
            }
        }
        Ok(())
    }

    /// Streams a blob through ByteStream Read into `out` as it arrives, hashing it on the way
    /// and verifying it at the end: memory holds one message, whatever the blob's size. A
    /// retry resumes at the offset reached (`read_offset`), so `out` gets each byte once; a
    /// server that sends more than the digest's size is stopped there. On an error, what was
    /// written to `out` is not the blob.
    fn stream_read(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> {
        let resource_name = self.resource_name(digest, false);
        let state = std::cell::RefCell::new(StreamRead {
            hasher: digest.function().hasher(),
            written: 0,
            out,
            failed: None,
        });
        self.call("ByteStream.Read", |channel| {
            let offset = state.borrow().written;
            let request = self.request(ReadRequest {
                resource_name: resource_name.clone(),
                read_offset: i64::try_from(offset).unwrap_or(i64::MAX),
                read_limit: 0,
            });
            let state = &state;
            async move {
                let mut stream = ByteStreamClient::new(channel).read(request).await?.into_inner();
                while let Some(response) = stream.message().await? {
                    let mut state = state.borrow_mut();
                    if let Err(err) = state.take(digest, &response.data) {
                        state.failed = Some(err);
                        return Err(Status::aborted("the blob is not what its digest says"));
                    }
                }
                Ok(tonic::Response::new(()))
            }
        })
        .map_err(|err| match (state.borrow_mut().failed.take(), err) {
            (Some(failed), _) => failed,
            (None, CasError::Rpc { code: Code::NotFound, .. }) => CasError::NotFound(*digest),
            (None, other) => other,
        })?;
        let state = state.into_inner();
        digest.verify(&state.hasher.finish())
    }

    /// Uploads a blob through ByteStream Write, reading it chunk by chunk from `source`.
    fn stream_write(
        &self,
        digest: &Digest,
        source: &dyn Fn() -> Result<Box<dyn Read + Send>, CasError>,
    ) -> Result<(), CasError> {
        let size = digest.size();
        self.call("ByteStream.Write", |channel| {
            let resource_name = self.resource_name(digest, true);
            let (sender, receiver) = tokio::sync::mpsc::channel::<WriteRequest>(4);
            let reader = source();
            let producer = self.runtime.spawn_blocking(move || -> Result<(), CasError> {
                let mut reader = reader?;
                let mut offset = 0u64;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let mut filled = 0;
                    while filled < CHUNK {
                        let n =
                            reader.read(&mut buf[filled..]).map_err(io_error("<upload source>"))?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    let finish = offset + filled as u64 >= size || filled < CHUNK;
                    let request = WriteRequest {
                        resource_name: if offset == 0 {
                            resource_name.clone()
                        } else {
                            String::new()
                        },
                        write_offset: offset as i64,
                        finish_write: finish,
                        data: Bytes::copy_from_slice(&buf[..filled]),
                    };
                    offset += filled as u64;
                    if sender.blocking_send(request).is_err() || finish {
                        return Ok(());
                    }
                }
            });
            let request = self.request(tokio_stream::wrappers::ReceiverStream::new(receiver));
            async move {
                let response = ByteStreamClient::new(channel).write(request).await;
                match producer.await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        return Err(Status::aborted(format!("reading the upload: {err}")));
                    }
                    Err(err) => return Err(Status::internal(format!("upload reader: {err}"))),
                }
                let response = response?;
                let committed = response.get_ref().committed_size;
                if committed != size as i64 {
                    return Err(Status::data_loss(format!(
                        "server committed {committed} of {size} bytes"
                    )));
                }
                Ok(response)
            }
        })
        .map(|_| ())
    }
}

/// A ByteStream Read in progress: what has been hashed and written so far.
struct StreamRead<'o> {
    hasher: crate::digest::Hasher,
    written: u64,
    out: &'o mut dyn Write,
    /// Why the stream was stopped here (not a transport error: not retried).
    failed: Option<CasError>,
}

impl StreamRead<'_> {
    /// Hashes and writes one message's data.
    fn take(&mut self, digest: &Digest, data: &[u8]) -> Result<(), CasError> {
        let written = self.written + data.len() as u64;
        if written > digest.size() {
            return Err(CasError::SizeMismatch { digest: *digest, actual: written });
        }
        self.hasher.update(data);
        self.out.write_all(data).map_err(io_error("<output>"))?;
        self.written = written;
        Ok(())
    }
}

impl Cas for GrpcCas {
    fn digest_function(&self) -> DigestFunction {
        self.config.digest_function
    }

    fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> {
        for digest in digests {
            check_function(self.config.digest_function, digest)?;
        }
        let mut out = vec![Bytes::new(); digests.len()];
        let mut small = Vec::new();
        for (i, digest) in digests.iter().enumerate() {
            if digest.is_empty_blob() {
                continue;
            } else if digest.size() > self.max_batch_bytes / 2 {
                let mut data = Vec::with_capacity(digest.size() as usize);
                self.stream_read(digest, &mut data)?;
                out[i] = Bytes::from(data);
            } else {
                small.push(i);
            }
        }
        let small_digests: Vec<Digest> = small.iter().map(|&i| digests[i]).collect();
        for range in batch_ranges(small_digests.iter().map(Digest::size), self.max_batch_bytes) {
            let blobs = self.batch_read(&small_digests[range.clone()])?;
            for (k, data) in range.zip(blobs) {
                out[small[k]] = data;
            }
        }
        Ok(out)
    }

    fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError> {
        let mut small = Vec::new();
        for blob in blobs {
            check_function(self.config.digest_function, blob.digest())?;
            if blob.digest().is_empty_blob() {
                continue;
            } else if blob.digest().size() > self.max_batch_bytes / 2 {
                let data = blob.data().clone();
                self.stream_write(blob.digest(), &move || {
                    Ok(Box::new(std::io::Cursor::new(data.clone())) as Box<dyn Read + Send>)
                })?;
            } else {
                small.push(blob.clone());
            }
        }
        for range in batch_ranges(small.iter().map(|b| b.digest().size()), self.max_batch_bytes) {
            self.batch_update(&small[range])?;
        }
        Ok(())
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        let unique = to_look_up(self.config.digest_function, digests)?;
        let mut missing = Vec::new();
        for chunk in unique.chunks(FIND_MISSING_CHUNK) {
            let response = self.call("FindMissingBlobs", |channel| {
                let request = self.request(FindMissingBlobsRequest {
                    instance_name: self.config.instance_name.clone(),
                    blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                    digest_function: self.function_field(),
                });
                async move {
                    ContentAddressableStorageClient::new(channel).find_missing_blobs(request).await
                }
            })?;
            let answered: std::collections::HashSet<Digest> = response
                .missing_blob_digests
                .iter()
                .map(|d| Digest::from_proto(self.config.digest_function, d))
                .collect::<Result<_, _>>()?;
            missing.extend(chunk.iter().filter(|d| answered.contains(d)).copied());
        }
        Ok(missing)
    }

    fn max_batch_bytes(&self) -> u64 {
        self.max_batch_bytes
    }

    fn read_blob_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> {
        check_function(self.config.digest_function, digest)?;
        if digest.is_empty_blob() {
            return Ok(());
        }
        self.stream_read(digest, out)
    }

    fn write_file(&self, digest: &Digest, path: &Path) -> Result<(), CasError> {
        check_function(self.config.digest_function, digest)?;
        if digest.size() <= self.max_batch_bytes / 2 {
            let data = std::fs::read(path).map_err(io_error(path))?;
            let blob = Blob::verified(digest, data)
                .map_err(|err| err.context(format!("storing {}", path.display())))?;
            return self.write_blobs(&[blob]);
        }
        let path_buf = path.to_path_buf();
        self.stream_write(digest, &move || {
            let file = std::fs::File::open(&path_buf).map_err(io_error(&path_buf))?;
            Ok(Box::new(std::io::BufReader::new(file)) as Box<dyn Read + Send>)
        })
        .map_err(|err| err.context(format!("uploading {}", path.display())))
    }
}

impl ActionCache for GrpcCas {
    fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError> {
        check_function(self.config.digest_function, action)?;
        let result = self.call("GetActionResult", |channel| {
            let request = self.request(GetActionResultRequest {
                instance_name: self.config.instance_name.clone(),
                action_digest: Some(action.to_proto()),
                inline_stdout: false,
                inline_stderr: false,
                inline_output_files: Vec::new(),
                digest_function: self.function_field(),
            });
            async move { ActionCacheClient::new(channel).get_action_result(request).await }
        });
        match result {
            Ok(result) => Ok(Some(result)),
            Err(CasError::Rpc { code: Code::NotFound, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError> {
        check_function(self.config.digest_function, action)?;
        self.call("UpdateActionResult", |channel| {
            let request = self.request(UpdateActionResultRequest {
                instance_name: self.config.instance_name.clone(),
                action_digest: Some(action.to_proto()),
                action_result: Some(result.clone()),
                results_cache_policy: None,
                digest_function: self.function_field(),
            });
            async move { ActionCacheClient::new(channel).update_action_result(request).await }
        })
        .map(|_| ())
    }
}
