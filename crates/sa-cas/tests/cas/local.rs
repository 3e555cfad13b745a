//! LocalCas specifics: the casd layout, corruption, truncation, temp files.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sa_cas::{ActionCache, Cas, CasError, DigestFunction, LocalCas, LocalCasConfig};

use super::blob;

fn open(dir: &std::path::Path) -> LocalCas {
    LocalCas::open(dir, LocalCasConfig::default()).unwrap()
}

#[test]
fn objects_are_read_only_files_named_like_casd() {
    let dir = tempfile::tempdir().unwrap();
    let cas = open(dir.path());
    let b = blob(1, 64);
    cas.write_blobs(std::slice::from_ref(&b)).unwrap();
    let hex = b.digest().hash_hex();
    let path = dir.path().join("cas/objects").join(&hex[..2]).join(&hex[2..]);
    assert_eq!(cas.blob_path(b.digest()), path);
    assert_eq!(std::fs::read(&path).unwrap(), &b.data()[..]);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o444);
    for sub in ["cas/tmp", "actioncache/objects", "actioncache/tmp"] {
        assert!(dir.path().join(sub).is_dir(), "{sub}");
    }
    let action = *blob(2, 8).digest();
    cas.update_action_result(&action, &Default::default()).unwrap();
    let hex = action.hash_hex();
    assert!(dir.path().join("actioncache/objects").join(&hex[..2]).join(&hex[2..]).is_file());
    // No temp file is left behind.
    assert_eq!(std::fs::read_dir(dir.path().join("cas/tmp")).unwrap().count(), 0);
}

fn corrupt(cas: &LocalCas, digest: &sa_cas::Digest, data: &[u8]) {
    let path = cas.blob_path(digest);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, data).unwrap();
}

#[test]
fn corrupt_object_is_a_digest_mismatch_naming_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let cas = open(dir.path());
    let b = blob(3, 32);
    cas.write_blobs(std::slice::from_ref(&b)).unwrap();
    corrupt(&cas, b.digest(), &[0u8; 32]);
    let err = cas.read_blob(b.digest()).unwrap_err();
    assert!(
        matches!(err.root_cause(), CasError::DigestMismatch { expected, .. } if expected == b.digest()),
        "{err}"
    );
    // The message names the object file, the store and the fix.
    let path = cas.blob_path(b.digest());
    assert_eq!(
        err.to_string(),
        format!(
            "object {} of the store at {} is corrupt: remove it, or write the blob again (a write replaces an object that does not verify)",
            path.display(),
            dir.path().display()
        )
    );
    assert!(err.root_cause().to_string().starts_with(&format!("blob {} is corrupt", b.digest())));
    let mut sink = Vec::new();
    let err = cas.read_blob_to(b.digest(), &mut sink).unwrap_err();
    assert!(matches!(err.root_cause(), CasError::DigestMismatch { .. }), "{err}");
    // Without verification the size check alone passes: the option is explicit.
    let unverified =
        LocalCas::open(dir.path(), LocalCasConfig { verify_reads: false, ..Default::default() })
            .unwrap();
    assert_eq!(unverified.read_blob(b.digest()).unwrap().len(), 32);
}

#[test]
fn truncated_object_is_a_size_mismatch_even_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let b = blob(4, 100);
    let cas = open(dir.path());
    cas.write_blobs(std::slice::from_ref(&b)).unwrap();
    corrupt(&cas, b.digest(), &b.data()[..40]);
    let unverified =
        LocalCas::open(dir.path(), LocalCasConfig { verify_reads: false, ..Default::default() })
            .unwrap();
    let err = unverified.read_blob(b.digest()).unwrap_err();
    assert!(matches!(err.root_cause(), CasError::SizeMismatch { actual: 40, .. }), "{err}");
    assert_eq!(
        err.root_cause().to_string(),
        format!(
            "blob {} has 40 bytes, not the 100 its digest says (a wrong size in the digest, or a corrupt object)",
            b.digest()
        )
    );
}

#[test]
fn a_write_repairs_a_corrupt_or_truncated_object() {
    let dir = tempfile::tempdir().unwrap();
    let cas = open(dir.path());
    let b = blob(6, 64);
    cas.write_blobs(std::slice::from_ref(&b)).unwrap();
    // Same size, other bytes: present, but a write replaces it.
    corrupt(&cas, b.digest(), &[7u8; 64]);
    assert!(cas.read_blob(b.digest()).is_err());
    cas.write_blobs(std::slice::from_ref(&b)).unwrap();
    assert_eq!(cas.read_blob(b.digest()).unwrap(), *b.data());
    let mode = std::fs::metadata(cas.blob_path(b.digest())).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "the replacement is read-only again");
    // Truncated: reported missing, so callers that ask first write it again.
    corrupt(&cas, b.digest(), &b.data()[..10]);
    assert_eq!(cas.find_missing(&[*b.digest()]).unwrap(), vec![*b.digest()]);
    let source = dir.path().join("source");
    std::fs::write(&source, b.data()).unwrap();
    cas.write_file(b.digest(), &source).unwrap();
    assert!(cas.find_missing(&[*b.digest()]).unwrap().is_empty());
    assert_eq!(cas.read_blob(b.digest()).unwrap(), *b.data());
}

#[test]
fn ingest_repairs_a_corrupt_object_of_the_same_size() {
    let dir = tempfile::tempdir().unwrap();
    let cas = open(&dir.path().join("store"));
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.c"), "int a = 1;\n").unwrap();
    let limits = sa_cas::merkle::TreeLimits::default();
    let root = sa_cas::merkle::ingest(&cas, &src, &limits).unwrap();
    let file = DigestFunction::Sha256.hash_bytes(b"int a = 1;\n");
    // Same size, other content: a size check finds it present.
    corrupt(&cas, &file, b"int a = 2;\n");
    assert!(cas.find_missing(&[file]).unwrap().is_empty(), "present by its size");
    assert_eq!(cas.find_missing_for_write(&[file]).unwrap(), vec![file], "corrupt by its hash");
    // Ingest again, as the error's advice says: the object is rewritten.
    assert_eq!(sa_cas::merkle::ingest(&cas, &src, &limits).unwrap(), root);
    assert_eq!(cas.read_blob(&file).unwrap(), &b"int a = 1;\n"[..]);
}

#[test]
fn a_corrupt_action_cache_entry_is_a_miss_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cas = open(dir.path());
    let action = *blob(5, 8).digest();
    let path = cas.action_result_path(&action);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, [0xff, 0xff, 0xff]).unwrap();
    assert_eq!(cas.get_action_result(&action).unwrap(), None);
    let result = sa_proto::reapi::ActionResult { exit_code: 0, ..Default::default() };
    cas.update_action_result(&action, &result).unwrap();
    assert_eq!(cas.get_action_result(&action).unwrap(), Some(result));
}

#[test]
fn stale_temp_files_of_ours_are_cleaned_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cas = open(dir.path());
    let tmp = dir.path().join("cas/tmp");
    std::fs::write(tmp.join("sa-tmp-dead"), b"partial").unwrap();
    std::fs::write(tmp.join("casd-owned"), b"not ours").unwrap();
    assert_eq!(
        cas.clean_stale_temp_files(Duration::from_secs(3600)).unwrap(),
        0,
        "fresh files stay"
    );
    assert_eq!(cas.clean_stale_temp_files(Duration::ZERO).unwrap(), 1);
    assert!(!tmp.join("sa-tmp-dead").exists());
    assert!(tmp.join("casd-owned").exists());
}

#[test]
fn blake3_store_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCasConfig { digest_function: DigestFunction::Blake3, verify_reads: true };
    let cas = LocalCas::open(dir.path(), config).unwrap();
    let digest = cas.write_blob(bytes::Bytes::from_static(b"blake")).unwrap();
    assert_eq!(digest.function(), DigestFunction::Blake3);
    assert_eq!(&cas.read_blob(&digest).unwrap()[..], b"blake");
}
