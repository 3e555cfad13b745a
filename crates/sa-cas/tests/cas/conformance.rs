//! The same behaviour from every backend: LocalCas, MemoryCas, GrpcCas against buildbox-casd.

use std::path::PathBuf;

use bytes::Bytes;
use sa_cas::merkle::{self, MaterializeOptions, TreeLimits};
use sa_cas::testing::Casd;
use sa_cas::{
    ActionCache, Blob, Cas, CasError, Digest, DigestFunction, GrpcCas, GrpcConfig, LocalCas,
    LocalCasConfig, MemoryCas, Store,
};
use sa_proto::reapi::{ActionResult, OutputFile};

use super::{blob, content};

fn suite(store: &dyn Store) {
    blobs_round_trip_in_order(store);
    missing_blobs_are_named(store);
    find_missing_deduplicates_and_skips_the_empty_blob(store);
    batches_over_four_mebibytes_are_split(store);
    large_blobs_stream(store);
    write_file_verifies_content(store);
    wrong_digest_function_is_refused(store);
    action_results_round_trip(store);
    trees_ingest_fetch_and_materialize(store);
}

fn blobs_round_trip_in_order(store: &dyn Store) {
    let blobs = [blob(1, 10), blob(2, 0), blob(3, 1000)];
    store.write_blobs(&blobs).unwrap();
    let digests: Vec<Digest> = [2, 0, 1, 0].iter().map(|&i| *blobs[i].digest()).collect();
    let read = store.read_blobs(&digests).unwrap();
    let expected: Vec<&Bytes> = [2, 0, 1, 0].iter().map(|&i| blobs[i].data()).collect();
    assert_eq!(read.iter().collect::<Vec<_>>(), expected);
    // Writing again is a no-op.
    store.write_blobs(&blobs).unwrap();
    assert_eq!(store.read_blob(blobs[0].digest()).unwrap(), blobs[0].data());
}

fn missing_blobs_are_named(store: &dyn Store) {
    let present = blob(10, 5);
    store.write_blobs(std::slice::from_ref(&present)).unwrap();
    let absent = *blob(11, 5).digest();
    let err = store.read_blobs(&[*present.digest(), absent]).unwrap_err();
    assert!(matches!(err, CasError::NotFound(d) if d == absent), "{err}");
    assert_eq!(err.to_string(), format!("missing blob {absent}"));
}

fn find_missing_deduplicates_and_skips_the_empty_blob(store: &dyn Store) {
    let present = blob(20, 7);
    store.write_blobs(std::slice::from_ref(&present)).unwrap();
    let (a, b) = (*blob(21, 7).digest(), *blob(22, 7).digest());
    let empty = DigestFunction::Sha256.empty_digest();
    let missing = store.find_missing(&[a, *present.digest(), b, a, empty]).unwrap();
    assert_eq!(missing, vec![a, b]);
}

fn batches_over_four_mebibytes_are_split(store: &dyn Store) {
    // 3,000 blobs of 2 KiB: 6 MiB, over buildbox-casd's 4 MiB message limit in one batch.
    let blobs: Vec<Blob> = (0..3000).map(|i| blob(1000 + i, 2048)).collect();
    merkle::write_in_batches(store, &blobs).unwrap();
    store.write_blobs(&blobs).unwrap();
    let digests: Vec<Digest> = blobs.iter().map(|b| *b.digest()).collect();
    assert!(store.find_missing(&digests).unwrap().is_empty());
    let read = store.read_blobs(&digests).unwrap();
    assert!(read.iter().zip(&blobs).all(|(r, b)| r == b.data()));
    let read = merkle::read_in_batches(store, &digests).unwrap();
    assert!(read.iter().zip(&blobs).all(|(r, b)| r == b.data()));
}

fn large_blobs_stream(store: &dyn Store) {
    let big = blob(30, (6 << 20) + 17);
    store.write_blobs(std::slice::from_ref(&big)).unwrap();
    assert_eq!(store.read_blob(big.digest()).unwrap(), big.data());
    let mut out = Vec::new();
    store.read_blob_to(big.digest(), &mut out).unwrap();
    assert_eq!(&out[..], &big.data()[..]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big2");
    let data = content(31, (5 << 20) + 3);
    std::fs::write(&path, &data).unwrap();
    let digest = DigestFunction::Sha256.hash_bytes(&data);
    store.write_file(&digest, &path).unwrap();
    assert_eq!(&store.read_blob(&digest).unwrap()[..], &data[..]);
}

fn write_file_verifies_content(store: &dyn Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"actual").unwrap();
    let claimed = DigestFunction::Sha256.hash_bytes(b"claims");
    let err = store.write_file(&claimed, &path).unwrap_err();
    assert!(
        matches!(err.root_cause(), CasError::DigestMismatch { expected, .. } if *expected == claimed),
        "{err}"
    );
    assert_eq!(store.find_missing(&[claimed]).unwrap(), vec![claimed]);
}

fn wrong_digest_function_is_refused(store: &dyn Store) {
    let b3 = DigestFunction::Blake3.hash_bytes(b"x");
    let err = store.read_blobs(&[b3]).unwrap_err();
    assert!(matches!(err, CasError::WrongDigestFunction { .. }), "{err}");
    let err = store.write_blobs(&[Blob::new(DigestFunction::Blake3, &b"x"[..])]).unwrap_err();
    assert!(matches!(err, CasError::WrongDigestFunction { .. }), "{err}");
}

fn action_results_round_trip(store: &dyn Store) {
    let action = *blob(40, 50).digest();
    assert_eq!(store.get_action_result(&action).unwrap(), None);
    let output = blob(41, 100);
    store.write_blobs(std::slice::from_ref(&output)).unwrap();
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "a.o".into(),
            digest: Some(output.digest().to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        subactions: vec![blob(42, 3).digest().to_proto()],
        ..Default::default()
    };
    store.update_action_result(&action, &result).unwrap();
    let got = store.get_action_result(&action).unwrap().expect("stored result");
    assert_eq!(got.output_files, result.output_files);
    assert_eq!(got.subactions, result.subactions, "field 99 survives the store");
}

fn trees_ingest_fetch_and_materialize(store: &dyn Store) {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    std::fs::create_dir_all(root.join("src/deep/er")).unwrap();
    std::fs::create_dir_all(root.join("include")).unwrap();
    std::fs::write(root.join("src/a.c"), b"int a;\n").unwrap();
    std::fs::write(root.join("src/deep/er/b.c"), b"int a;\n").unwrap(); // same content
    std::fs::write(root.join("include/empty.h"), b"").unwrap();
    std::fs::write(root.join("big.bin"), content(50, (5 << 20) + 1)).unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../include/empty.h", root.join("src/link.h")).unwrap();
    let limits = TreeLimits::default();
    let digest = merkle::ingest(store, root, &limits).unwrap();
    // Ingest is deterministic and idempotent.
    assert_eq!(merkle::ingest(store, root, &limits).unwrap(), digest);
    let forest = merkle::fetch_tree(store, &digest, &limits).unwrap();
    assert_eq!(forest.len(), 5, "root, include, src, src/deep, src/deep/er");
    let paths: Vec<String> =
        forest.files(&digest).unwrap().into_iter().map(|file| file.path).collect();
    assert_eq!(paths, ["big.bin", "run.sh", "include/empty.h", "src/a.c", "src/deep/er/b.c"]);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("tree");
    merkle::materialize(store, &digest, &target, &MaterializeOptions::default()).unwrap();
    assert_eq!(std::fs::read(target.join("src/deep/er/b.c")).unwrap(), b"int a;\n");
    assert_eq!(
        std::fs::read_link(target.join("src/link.h")).unwrap().to_str(),
        Some("../include/empty.h")
    );
    let mode = std::fs::metadata(target.join("run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111);
    assert_eq!(std::fs::read(target.join("big.bin")).unwrap(), content(50, (5 << 20) + 1));
    // Re-ingesting the materialized copy gives the same root.
    assert_eq!(merkle::ingest(store, &target, &limits).unwrap(), digest);
}

#[test]
fn memory_cas_conforms() {
    suite(&MemoryCas::new(DigestFunction::Sha256));
}

#[test]
fn local_cas_conforms() {
    let dir = tempfile::tempdir().unwrap();
    suite(&LocalCas::open(dir.path(), LocalCasConfig::default()).unwrap());
}

#[test]
fn grpc_cas_against_buildbox_casd_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let cas = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    assert!(cas.max_batch_bytes() <= 4 << 20, "casd rejects messages over 4 MiB");
    suite(&cas);
    // GetTree, with paging, agrees with the level-by-level walk.
    let src = tempfile::tempdir().unwrap();
    for i in 0..50 {
        std::fs::create_dir_all(src.path().join(format!("d{i}/e"))).unwrap();
        std::fs::write(src.path().join(format!("d{i}/e/f")), format!("{i}")).unwrap();
    }
    let root = merkle::ingest(&cas, src.path(), &TreeLimits::default()).unwrap();
    let walked = merkle::fetch_tree(&cas, &root, &TreeLimits::default()).unwrap();
    let via_get_tree = cas.get_tree(&root).unwrap();
    assert_eq!(via_get_tree.len(), walked.len());
}

#[test]
fn grpc_cas_reaches_casd_over_a_unix_socket_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("casd");
    std::fs::create_dir_all(&store).unwrap();
    let socket = dir.path().join("casd.sock");
    let bb = sa_cas::testing::buildbox_dir();
    let mut child = std::process::Command::new(bb.join("buildbox-casd"))
        .arg(format!("--bind=unix:{}", socket.display()))
        .arg("--log-level=warning")
        .arg(&store)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut config = GrpcConfig::new(format!("unix:{}", socket.display()));
    config.headers = vec![("Authorization".into(), "Bearer secret-token".into())];
    assert!(!format!("{config:?}").contains("secret-token"), "header values never shown");
    assert!(format!("{config:?}").contains("Authorization"), "header names are");
    let cas = GrpcCas::connect(config).unwrap();
    assert!(!format!("{cas:?}").contains("secret-token"), "header values never shown");
    let b = blob(60, 100);
    cas.write_blobs(std::slice::from_ref(&b)).unwrap();
    assert_eq!(cas.read_blob(b.digest()).unwrap(), b.data());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn grpc_cas_refuses_blake3_against_casd() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let mut config = GrpcConfig::new(casd.endpoint());
    config.digest_function = DigestFunction::Blake3;
    let err = GrpcCas::connect(config).unwrap_err();
    assert!(
        matches!(err, CasError::UnsupportedDigestFunction(ref s) if s.starts_with("blake3")),
        "{err}"
    );
}

#[test]
fn grpc_cas_reports_unreachable_and_malformed_endpoints() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = GrpcConfig::new(format!("grpc://127.0.0.1:{port}"));
    config.connect_timeout = std::time::Duration::from_secs(2);
    let err = GrpcCas::connect(config).unwrap_err();
    assert!(matches!(err, CasError::Connect { .. }), "{err}");
    // A refused connection is what a restarting server looks like: retried with backoff.
    assert!(err.to_string().contains("(after 6 attempts)"), "{err}");
    for bad in ["http://x:1", "grpc://", "unix:relative.sock", "grpc://h:1/path"] {
        let err = GrpcCas::connect(GrpcConfig::new(bad)).unwrap_err();
        assert!(err.to_string().starts_with(&format!("cannot connect to {bad}")), "{err}");
    }
}

#[test]
fn local_cas_and_casd_share_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("shared");
    let casd = Casd::start(&store_dir);
    let grpc = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    let local = LocalCas::open(casd.store(), LocalCasConfig::default()).unwrap();
    // casd writes, LocalCas reads.
    let from_casd = blob(70, 300);
    grpc.write_blobs(std::slice::from_ref(&from_casd)).unwrap();
    assert_eq!(local.read_blob(from_casd.digest()).unwrap(), from_casd.data());
    let action = *blob(71, 10).digest();
    let result = ActionResult {
        exit_code: 3,
        stdout_digest: Some(from_casd.digest().to_proto()),
        ..Default::default()
    };
    grpc.update_action_result(&action, &result).unwrap();
    assert_eq!(local.get_action_result(&action).unwrap().map(|r| r.exit_code), Some(3));
    // LocalCas writes, casd serves.
    let from_local = blob(72, 400);
    local.write_blobs(std::slice::from_ref(&from_local)).unwrap();
    assert_eq!(grpc.read_blob(from_local.digest()).unwrap(), from_local.data());
    let action2 = *blob(73, 10).digest();
    let result2 = ActionResult {
        exit_code: 4,
        stdout_digest: Some(from_local.digest().to_proto()),
        ..Default::default()
    };
    local.update_action_result(&action2, &result2).unwrap();
    assert_eq!(grpc.get_action_result(&action2).unwrap().map(|r| r.exit_code), Some(4));
}

#[test]
fn grpcs_verifies_the_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let (ca, cert, key) = sa_cas::testing::certificates(dir.path(), "server");
    let (other_ca, _, _) = sa_cas::testing::certificates(dir.path(), "other");
    let tls = sa_cas::testing::TlsProxy::start(casd.port(), &cert, &key);
    let config = |host: &str, ca: Option<&PathBuf>| {
        let mut config = GrpcConfig::new(format!("grpcs://{host}:{}", tls.port()));
        config.tls_ca_cert = ca.cloned();
        config.max_retries = 0;
        config
    };
    // Trusted CA, matching name: works end to end through TLS.
    let cas = GrpcCas::connect(config("localhost", Some(&ca))).unwrap();
    let b = blob(70, 1000);
    cas.write_blobs(std::slice::from_ref(&b)).unwrap();
    assert_eq!(cas.read_blob(b.digest()).unwrap(), b.data());
    // No CA given (the system roots do not know ours), another CA, another name: refused.
    for (host, ca, why) in [
        ("localhost", None, "UnknownIssuer"),
        // The other CA has the same subject: found as the issuer, its signature fails.
        ("localhost", Some(&other_ca), "BadSignature"),
        ("127.0.0.1", Some(&ca), "certificate not valid for name \"127.0.0.1\""),
    ] {
        let err = GrpcCas::connect(config(host, ca)).unwrap_err().to_string();
        assert!(
            err.contains("invalid peer certificate") && err.contains(why),
            "{host} {ca:?}: {err}"
        );
    }
    // A certificate file that never ends is refused as it is read, not read forever.
    let endless = PathBuf::from("/dev/zero");
    let err = GrpcCas::connect(config("localhost", Some(&endless))).unwrap_err().to_string();
    assert!(err.contains("/dev/zero holds more than 4194304 bytes"), "{err}");
}

#[test]
fn backoff_doubles_caps_at_five_seconds_jitters_and_counts_attempts() {
    let mut config = GrpcConfig::new("grpc://unused:1");
    config.retry_delay = std::time::Duration::from_millis(1500);
    config.max_retries = 4;
    let mut backoff = sa_cas::Backoff::new(&config);
    assert_eq!(backoff.attempts_note(), "");
    let delays: Vec<u128> =
        std::iter::from_fn(|| backoff.next_delay()).map(|d| d.as_millis()).collect();
    // Each pause lies between half of the schedule's and all of it.
    assert_eq!(delays.len(), 4);
    for (delay, full) in delays.iter().zip([1500, 3000, 5000, 5000]) {
        assert!((full / 2..=full).contains(delay), "{delays:?}");
    }
    // And they differ between clients: 20 schedules never all alike.
    let firsts: std::collections::BTreeSet<u128> =
        (0..20).map(|_| sa_cas::Backoff::new(&config).next_delay().unwrap().as_millis()).collect();
    assert!(firsts.len() > 1, "{firsts:?}");
    assert_eq!(backoff.next_delay(), None);
    assert_eq!(backoff.attempts_note(), " (after 5 attempts)");
}

#[test]
fn a_streamed_read_cut_midway_resumes_where_it_was_and_verifies() {
    use sa_cas::testing::{Fault, FaultProxy};
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("store"));
    let direct = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(7) % 251) as u8).collect();
    let digest = direct.write_blob(data.clone().into()).unwrap();
    // The first connection is cut half-way through the blob; the next ones are faithful.
    let proxy = FaultProxy::start(casd.port(), vec![Fault::CutAfter(3 << 20), Fault::None]);
    let through = GrpcCas::connect(GrpcConfig::new(proxy.endpoint())).unwrap();
    let mut out = Vec::new();
    through.read_blob_to(&digest, &mut out).unwrap();
    assert_eq!(proxy.faults(), 1, "the stream was cut");
    assert_eq!(out.len(), data.len(), "each byte written once");
    assert!(out == data, "the blob, byte for byte");
}
