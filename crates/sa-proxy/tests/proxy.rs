//! The proxy between gRPC clients and a real buildbox-casd: every kind of RPC answers through
//! it as it does directly, the recorded calls are recorded, and failures are the client's to
//! see at once.

// Test helpers unwrap: a failure is a panic naming the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

use prost::Message;
use sa_cas::testing::Casd;
use sa_cas::{Digest, DigestFunction, GrpcConfig, merkle};
use sa_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use sa_proto::google::bytestream::{ReadRequest, WriteRequest};
use sa_proto::reapi::action_cache_client::ActionCacheClient;
use sa_proto::reapi::batch_update_blobs_request::Request as UpdateRequest;
use sa_proto::reapi::capabilities_client::CapabilitiesClient;
use sa_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use sa_proto::reapi::execution_client::ExecutionClient;
use sa_proto::reapi::{
    Action, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Command, ExecuteRequest,
    ExecuteResponse, FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest,
    GetTreeRequest, RequestMetadata, ToolDetails, UpdateActionResultRequest,
};
use sa_proxy::{Listen, Proxy, ProxyConfig, read_recording};
use serde_json::Value;
use tonic::transport::Channel;

const SHA: DigestFunction = DigestFunction::Sha256;

struct Setup {
    _dir: tempfile::TempDir,
    record: std::path::PathBuf,
    casd: Casd,
    proxy: Proxy,
    runtime: tokio::runtime::Runtime,
}

/// The recording at `path` once it has `lines` lines: the proxy writes a call's line as the
/// response's end passes through it, which can be just after the client has read that end.
fn recording_of(path: &std::path::Path, lines: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let read = read_recording(path, 1 << 20).map(|r| r.lines).unwrap_or_default();
        if read.len() >= lines || std::time::Instant::now() > deadline {
            return read;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn setup(executing: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("casd");
    let casd = if executing { Casd::start_executing(&store, 2) } else { Casd::start(&store) };
    let record = dir.path().join("recordings");
    let config = ProxyConfig::new(GrpcConfig::new(casd.endpoint()), record.clone());
    let proxy = Proxy::start(&Listen::parse("127.0.0.1:0").unwrap(), config).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    Setup { _dir: dir, record, casd, proxy, runtime }
}

impl Setup {
    fn channel(&self, endpoint: &str) -> Channel {
        let url = endpoint.replace("grpc://", "http://");
        self.runtime.block_on(async { Channel::from_shared(url).unwrap().connect().await.unwrap() })
    }

    /// A channel straight to casd and one through the proxy.
    fn both(&self) -> [Channel; 2] {
        [self.channel(&self.casd.endpoint()), self.channel(self.proxy.endpoint())]
    }
}

fn d(digest: &Digest) -> Option<sa_proto::reapi::Digest> {
    Some(digest.to_proto())
}

fn status_text(status: &tonic::Status) -> (tonic::Code, String, Vec<u8>) {
    (status.code(), status.message().to_owned(), status.details().to_vec())
}

#[test]
fn every_rpc_kind_answers_as_the_upstream_does() {
    let s = setup(false);
    let [direct, proxied] = s.both();
    let blobs: Vec<(Digest, Vec<u8>)> = (0..5u8)
        .map(|i| {
            let data = vec![i; 100 + i as usize];
            (SHA.hash_bytes(&data), data)
        })
        .collect();
    let wrong = (SHA.hash_bytes(b"other"), b"not the content".to_vec());
    s.runtime.block_on(async {
        // Capabilities.
        let answers = futures_both(&direct, &proxied, |c| async move {
            CapabilitiesClient::new(c)
                .get_capabilities(GetCapabilitiesRequest::default())
                .await
                .map(|r| r.into_inner().encode_to_vec())
                .map_err(|e| status_text(&e))
        })
        .await;
        assert_eq!(answers[0], answers[1]);
        // BatchUpdateBlobs through the proxy, with one blob whose hash is wrong: the per-blob
        // statuses are what casd says.
        let requests: Vec<UpdateRequest> = blobs
            .iter()
            .chain(std::iter::once(&wrong))
            .map(|(digest, data)| UpdateRequest {
                digest: d(digest),
                data: data.clone().into(),
                ..Default::default()
            })
            .collect();
        let update = |c: Channel| {
            let requests = requests.clone();
            async move {
                ContentAddressableStorageClient::new(c)
                    .batch_update_blobs(BatchUpdateBlobsRequest { requests, ..Default::default() })
                    .await
                    .map(|r| r.into_inner().encode_to_vec())
                    .map_err(|e| status_text(&e))
            }
        };
        let answers = futures_both(&direct, &proxied, update).await;
        assert_eq!(answers[0], answers[1]);
        // FindMissingBlobs, BatchReadBlobs.
        let digests: Vec<_> =
            blobs.iter().map(|(digest, _)| digest.to_proto()).chain([wrong.0.to_proto()]).collect();
        let answers = futures_both(&direct, &proxied, |c| {
            let digests = digests.clone();
            async move {
                let mut cas = ContentAddressableStorageClient::new(c);
                let missing = cas
                    .find_missing_blobs(FindMissingBlobsRequest {
                        blob_digests: digests.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| status_text(&e))?
                    .into_inner();
                let read = cas
                    .batch_read_blobs(BatchReadBlobsRequest { digests, ..Default::default() })
                    .await
                    .map_err(|e| status_text(&e))?
                    .into_inner();
                Ok::<_, (tonic::Code, String, Vec<u8>)>((
                    missing.encode_to_vec(),
                    read.encode_to_vec(),
                ))
            }
        })
        .await;
        assert_eq!(answers[0], answers[1]);
        assert!(answers[1].as_ref().unwrap().1.len() > 500, "the blobs came back");
        // GetActionResult: NOT_FOUND with its message; then a hit after UpdateActionResult.
        let action = SHA.hash_bytes(b"an action");
        let get = |c: Channel| async move {
            ActionCacheClient::new(c)
                .get_action_result(GetActionResultRequest {
                    action_digest: d(&action),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().encode_to_vec())
                .map_err(|e| status_text(&e))
        };
        let answers = futures_both(&direct, &proxied, get).await;
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[1].as_ref().unwrap_err().0, tonic::Code::NotFound);
        let result =
            ActionResult { exit_code: 0, stdout_digest: d(&blobs[0].0), ..Default::default() };
        ActionCacheClient::new(proxied.clone())
            .update_action_result(UpdateActionResultRequest {
                action_digest: d(&action),
                action_result: Some(result.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let answers = futures_both(&direct, &proxied, get).await;
        assert_eq!(answers[0], answers[1]);
        assert_eq!(ActionResult::decode(&answers[1].as_ref().unwrap()[..]).unwrap(), result);
    });
    // The GetActionResult calls were recorded: a miss (5) and a hit.
    let lines = recording_of(&s.record.join("unknown.jsonl"), 2);
    let statuses: Vec<(i64, bool)> = lines
        .iter()
        .map(|l| (l["status"].as_i64().unwrap(), l["cached"].as_bool().unwrap()))
        .collect();
    assert_eq!(statuses, [(5, false), (0, true)]);
    assert!(lines.iter().all(|l| l["kind"] == "get_action_result"));
}

/// Runs `call` on both channels.
async fn futures_both<F, Fut, T>(direct: &Channel, proxied: &Channel, call: F) -> [T; 2]
where
    F: Fn(Channel) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    [call(direct.clone()).await, call(proxied.clone()).await]
}

#[test]
fn get_tree_pages_and_large_bytestream_blobs_stream_through() {
    let s = setup(false);
    let [direct, proxied] = s.both();
    // A tree of 40 directories, read in pages of 7.
    let grpc = sa_cas::GrpcCas::connect(GrpcConfig::new(s.casd.endpoint())).unwrap();
    let mut files = Vec::new();
    for i in 0..40 {
        let blob = sa_cas::Cas::write_blob(&grpc, format!("file {i}").into()).unwrap();
        files.push(merkle::TreeFile::new(format!("d{i:02}/f"), blob, false));
    }
    let root = merkle::build_tree(&grpc, &files).unwrap();
    for size in [5usize << 20, 70 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let digest = SHA.hash_bytes(&data);
        s.runtime.block_on(async {
            // Write through the proxy in 1 MiB chunks, read back both ways.
            let name = format!("uploads/{}/blobs/{}/{}", uuid_like(size), digest.hash_hex(), size);
            let chunks: Vec<WriteRequest> = data
                .chunks(1 << 20)
                .enumerate()
                .map(|(i, chunk)| WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: (i << 20) as i64,
                    finish_write: (i + 1) << 20 >= size,
                    data: chunk.to_vec().into(),
                })
                .collect();
            let written = ByteStreamClient::new(proxied.clone())
                .write(tokio_stream::iter(chunks))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(written.committed_size, size as i64);
            let read = |c: Channel| {
                let resource_name = format!("blobs/{}/{}", digest.hash_hex(), size);
                async move {
                    let mut stream = ByteStreamClient::new(c)
                        .read(ReadRequest { resource_name, ..Default::default() })
                        .await
                        .unwrap()
                        .into_inner();
                    let mut out = Vec::new();
                    while let Some(chunk) = stream.message().await.unwrap() {
                        out.extend_from_slice(&chunk.data);
                    }
                    out
                }
            };
            let answers = futures_both(&direct, &proxied, read).await;
            assert!(answers[0] == data && answers[1] == data, "{size} bytes round trip");
        });
    }
    s.runtime.block_on(async {
        let pages = |c: Channel| async move {
            let mut cas = ContentAddressableStorageClient::new(c);
            let mut pages = Vec::new();
            let mut token = String::new();
            loop {
                let mut stream = cas
                    .get_tree(GetTreeRequest {
                        root_digest: d(&root),
                        page_size: 7,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut next = String::new();
                while let Some(page) = stream.message().await.unwrap() {
                    next = page.next_page_token.clone();
                    pages.push(page.encode_to_vec());
                }
                if next.is_empty() {
                    return pages;
                }
                token = next;
            }
        };
        let answers = futures_both(&direct, &proxied, pages).await;
        assert_eq!(answers[0], answers[1]);
        assert!(!answers[1].is_empty());
    });
}

fn uuid_like(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn metadata(invocation: &str, mnemonic: &str) -> tonic::metadata::BinaryMetadataValue {
    let metadata = RequestMetadata {
        tool_details: Some(ToolDetails { tool_name: "bazel".into(), tool_version: "4.2.3".into() }),
        action_id: "a1".into(),
        tool_invocation_id: invocation.into(),
        correlated_invocations_id: "build-7".into(),
        action_mnemonic: mnemonic.into(),
        target_id: "//app:main".into(),
        ..Default::default()
    };
    tonic::metadata::BinaryMetadataValue::from_bytes(&metadata.encode_to_vec())
}

/// An action running `/bin/sh -c SCRIPT` in an input root where `/bin/sh` works under casd.
fn shell_action(grpc: &sa_cas::GrpcCas, script: &str) -> Digest {
    let root = {
        let sha = SHA;
        let dir = merkle::DirectoryBuilder::new()
            .symlink("bin", "usr/bin")
            .symlink("lib", "usr/lib")
            .symlink("lib64", "usr/lib64")
            .build(sha)
            .unwrap();
        sa_cas::Cas::write_blob(grpc, merkle::directory_blob(sha, &dir).into_data()).unwrap()
    };
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        output_paths: vec!["out".into()],
        ..Default::default()
    };
    let command = sa_cas::write_message(grpc, &command).unwrap();
    let action =
        Action { command_digest: d(&command), input_root_digest: d(&root), ..Default::default() };
    sa_cas::write_message(grpc, &action).unwrap()
}

#[test]
fn execute_and_get_action_result_are_recorded_with_the_clients_metadata() {
    let s = setup(true);
    let grpc = sa_cas::GrpcCas::connect(GrpcConfig::new(s.casd.endpoint())).unwrap();
    let action = shell_action(&grpc, "echo built > out");
    let failing = shell_action(&grpc, "exit 3");
    let proxied = s.channel(s.proxy.endpoint());
    let direct = s.channel(&s.casd.endpoint());
    s.runtime.block_on(async {
        for (digest, mnemonic) in
            [(action, "CppCompile"), (action, "CppCompile"), (failing, "Genrule")]
        {
            let mut request = tonic::Request::new(ExecuteRequest {
                action_digest: d(&digest),
                ..Default::default()
            });
            request.metadata_mut().insert_bin(
                "build.bazel.remote.execution.v2.requestmetadata-bin",
                metadata("inv-1", mnemonic),
            );
            let mut stream =
                ExecutionClient::new(proxied.clone()).execute(request).await.unwrap().into_inner();
            let mut last = None;
            while let Some(operation) = stream.message().await.unwrap() {
                last = Some(operation);
            }
            let operation = last.unwrap();
            assert!(operation.done);
            let Some(sa_proto::google::longrunning::operation::Result::Response(any)) =
                operation.result
            else {
                panic!("no response");
            };
            let response = ExecuteResponse::decode(&any.value[..]).unwrap();
            assert_eq!(response.result.unwrap().exit_code, if digest == action { 0 } else { 3 });
        }
        // An action whose blobs the server lacks: the same error, details included, both ways.
        let missing = SHA.hash_bytes(b"an action nobody uploaded");
        let mut outcomes = Vec::new();
        for channel in [direct.clone(), proxied.clone()] {
            let request = ExecuteRequest { action_digest: d(&missing), ..Default::default() };
            let outcome = match ExecutionClient::new(channel).execute(request).await {
                Err(status) => status_text(&status),
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut text = (tonic::Code::Ok, String::new(), Vec::new());
                    loop {
                        match stream.message().await {
                            Ok(Some(operation)) => {
                                text.1 = format!("{:?}", operation.result);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                text = status_text(&status);
                                break;
                            }
                        }
                    }
                    text
                }
            };
            outcomes.push(outcome);
        }
        assert_eq!(outcomes[0], outcomes[1], "the refusal comes back unchanged");
        // casd answers with an ExecuteResponse whose status is NOT_FOUND.
        assert!(outcomes[1].1.contains("ExecuteResponse"), "{outcomes:?}");
        let mut request = tonic::Request::new(GetActionResultRequest {
            action_digest: d(&action),
            ..Default::default()
        });
        request.metadata_mut().insert_bin(
            "build.bazel.remote.execution.v2.requestmetadata-bin",
            metadata("inv-1", "CppCompile"),
        );
        ActionCacheClient::new(proxied.clone()).get_action_result(request).await.unwrap();
    });
    // The refused Execute carried no RequestMetadata: it is in unknown.jsonl, with its code.
    let refused = recording_of(&s.record.join("unknown.jsonl"), 1);
    let missing = SHA.hash_bytes(b"an action nobody uploaded").to_string();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["action"], missing.as_str());
    assert_eq!(refused[0]["status"], 5, "the refusal is recorded with its code: {}", refused[0]);
    let lines = recording_of(&s.record.join("inv-1.jsonl"), 4);
    let summary: Vec<(String, String, bool, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().into(),
                l["action"].as_str().unwrap().into(),
                l["cached"].as_bool().unwrap(),
                l["status"].as_i64().unwrap(),
            )
        })
        .collect();
    let a = action.to_string();
    assert_eq!(
        summary,
        [
            ("execute".into(), a.clone(), false, 0),
            ("execute".into(), a.clone(), true, 0),
            ("execute".into(), failing.to_string(), false, 0),
            ("get_action_result".into(), a, true, 0),
        ]
    );
    assert_eq!(lines[2]["exit_code"], 3, "a command that ran and failed: {}", lines[2]);
    assert_eq!(lines[0]["exit_code"], 0);
    let first: &Value = &lines[0];
    for (key, value) in [
        ("tool_name", "bazel"),
        ("tool_version", "4.2.3"),
        ("tool_invocation_id", "inv-1"),
        ("correlated_invocations_id", "build-7"),
        ("action_mnemonic", "CppCompile"),
        ("target_id", "//app:main"),
        ("action_id", "a1"),
        ("instance_name", ""),
    ] {
        assert_eq!(first[key], value, "{key}: {first}");
    }
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn an_unreachable_upstream_is_unavailable_at_once_and_many_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let config = ProxyConfig::new(GrpcConfig::new("grpc://127.0.0.1:1"), dir.path().join("r"));
    let proxy = Proxy::start(&Listen::parse("127.0.0.1:0").unwrap(), config).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let url = proxy.endpoint().replace("grpc://", "http://");
    let status = runtime.block_on(async {
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        CapabilitiesClient::new(channel)
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("upstream grpc://127.0.0.1:1"), "{status:?}");

    // 64 clients at once, each on its own connection, through a proxy to casd.
    let s = setup(false);
    let url = s.proxy.endpoint().replace("grpc://", "http://");
    let ok = s.runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
                let mut cas = ContentAddressableStorageClient::new(channel);
                let data = format!("client {i}").into_bytes();
                let digest = SHA.hash_bytes(&data);
                cas.batch_update_blobs(BatchUpdateBlobsRequest {
                    requests: vec![UpdateRequest {
                        digest: d(&digest),
                        data: data.clone().into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await
                .unwrap();
                let read = cas
                    .batch_read_blobs(BatchReadBlobsRequest {
                        digests: vec![digest.to_proto()],
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                read.responses[0].data.to_vec() == data
            }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += usize::from(task.await.unwrap());
        }
        ok
    });
    assert_eq!(ok, 64);
}

#[test]
fn a_client_gone_mid_stream_leaves_the_proxy_serving() {
    let s = setup(false);
    let grpc = sa_cas::GrpcCas::connect(GrpcConfig::new(s.casd.endpoint())).unwrap();
    let data = vec![7u8; 20 << 20];
    let digest = SHA.hash_bytes(&data);
    sa_cas::Cas::write_blobs(&grpc, &[sa_cas::Blob::new(SHA, data)]).unwrap();
    let url = s.proxy.endpoint().replace("grpc://", "http://");
    s.runtime.block_on(async {
        let channel = Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let resource_name = format!("blobs/{}/{}", digest.hash_hex(), digest.size());
        let mut stream = ByteStreamClient::new(channel)
            .read(ReadRequest { resource_name, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(!stream.message().await.unwrap().unwrap().data.is_empty());
        // Gone after the first chunk.
        drop(stream);
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        CapabilitiesClient::new(channel)
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap();
    });
}

#[test]
fn listen_addresses_are_checked() {
    assert!(Listen::parse("example.com:80").is_err());
    assert!(Listen::parse("unix:relative.sock").is_err());
    assert_eq!(Listen::parse("localhost:8980").unwrap(), Listen::parse("127.0.0.1:8980").unwrap());
}

#[test]
fn the_listener_serves_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let (ca, cert, key) = sa_cas::testing::certificates(dir.path(), "proxy");
    let mut config = ProxyConfig::new(GrpcConfig::new(casd.endpoint()), dir.path().join("rec"));
    config.listen_tls = Some((cert, key));
    let proxy = Proxy::start(&Listen::parse("127.0.0.1:0").unwrap(), config).unwrap();
    assert!(proxy.endpoint().starts_with("grpcs://"), "{}", proxy.endpoint());
    let port = proxy.endpoint().rsplit(':').next().unwrap().to_owned();
    // A client that trusts the CA reaches casd through the TLS listener.
    let mut client = GrpcConfig::new(format!("grpcs://localhost:{port}"));
    client.tls_ca_cert = Some(ca);
    let grpc = sa_cas::GrpcCas::connect(client).unwrap();
    let digest = sa_cas::Cas::write_blob(&grpc, "over TLS".into()).unwrap();
    let direct = sa_cas::GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    assert_eq!(sa_cas::Cas::read_blob(&direct, &digest).unwrap(), "over TLS");
    // One that does not is refused.
    let err =
        sa_cas::GrpcCas::connect(GrpcConfig::new(format!("grpcs://localhost:{port}"))).unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    // A key that is not a key is an error naming the file.
    let mut config = ProxyConfig::new(GrpcConfig::new(casd.endpoint()), dir.path().join("rec"));
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not PEM").unwrap();
    config.listen_tls = Some((bogus.clone(), bogus));
    let err = Proxy::start(&Listen::parse("127.0.0.1:0").unwrap(), config).unwrap_err();
    assert!(err.to_string().starts_with("listener TLS: "), "{err}");
}

#[test]
fn an_execute_dropped_after_its_final_operation_is_recorded_with_its_outcome() {
    // Regression: a client that drops the stream as soon as it has the done Operation (before
    // the trailers) was recorded as CANCELLED.
    let s = setup(true);
    let grpc = sa_cas::GrpcCas::connect(GrpcConfig::new(s.casd.endpoint())).unwrap();
    let action = shell_action(&grpc, "echo once > out");
    let proxied = s.channel(s.proxy.endpoint());
    s.runtime.block_on(async {
        let request = ExecuteRequest { action_digest: d(&action), ..Default::default() };
        let mut stream = ExecutionClient::new(proxied).execute(request).await.unwrap().into_inner();
        while let Some(operation) = stream.message().await.unwrap() {
            if operation.done {
                break;
            }
        }
        drop(stream);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    });
    let lines = read_recording(&s.record.join("unknown.jsonl"), 1 << 20).unwrap().lines;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (lines[0]["status"].as_i64(), lines[0]["exit_code"].as_i64()),
        (Some(0), Some(0)),
        "{}",
        lines[0]
    );
}

#[test]
fn a_call_the_upstream_never_answers_is_recorded_as_cancelled_when_the_client_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    // An upstream that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("grpc://{}", silent.local_addr().unwrap());
    let record = dir.path().join("recordings");
    let config = ProxyConfig::new(GrpcConfig::new(upstream), record.clone());
    let proxy = Proxy::start(&Listen::parse("127.0.0.1:0").unwrap(), config).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let action = SHA.hash_bytes(b"an action");
    let url = proxy.endpoint().replace("grpc://", "http://");
    runtime.block_on(async {
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut client = ActionCacheClient::new(channel);
        let call = client.get_action_result(GetActionResultRequest {
            action_digest: d(&action),
            ..Default::default()
        });
        // The client gives up after a while: its stream is cancelled.
        let answered = tokio::time::timeout(std::time::Duration::from_millis(500), call).await;
        assert!(answered.is_err(), "nothing can answer");
    });
    let lines = recording_of(&record.join("unknown.jsonl"), 1);
    assert_eq!(lines.len(), 1, "the call is recorded");
    assert_eq!(lines[0]["action"], action.to_string());
    assert_eq!(lines[0]["status"], tonic::Code::Cancelled as i32);
    drop(silent);
}
