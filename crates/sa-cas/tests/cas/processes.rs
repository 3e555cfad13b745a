//! Several processes writing the same LocalCas at once.

use sa_cas::{ActionCache, Cas, LocalCas, LocalCasConfig};
use sa_proto::reapi::ActionResult;

use super::blob;

const CHILD_ENV: &str = "SA_CAS_TEST_WRITER_DIR";
const WRITERS: u64 = 4;
const BLOBS: u64 = 400;

/// Run normally, this test is the parent: it starts writer processes (this same test binary,
/// filtered to this test, with `CHILD_ENV` set) that store overlapping blob sets and action
/// results at once, then checks that every object hashes to its name and no temp file is left.
#[test]
fn concurrent_writer_processes_leave_only_whole_objects() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let writer: u64 = std::env::var("SA_CAS_TEST_WRITER").unwrap().parse().unwrap();
        let cas = LocalCas::open(dir, LocalCasConfig::default()).unwrap();
        // Overlapping sets: blob i is written by every writer whose range covers it.
        for i in (writer * BLOBS / 2)..(writer * BLOBS / 2 + BLOBS) {
            let b = blob(i, 1 + (i as usize * 37) % 20_000);
            cas.write_blobs(std::slice::from_ref(&b)).unwrap();
            let result = ActionResult { exit_code: i as i32, ..Default::default() };
            cas.update_action_result(blob(i, 8).digest(), &result).unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "processes::concurrent_writer_processes_leave_only_whole_objects",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .env("SA_CAS_TEST_WRITER", w.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let cas = LocalCas::open(dir.path(), LocalCasConfig::default()).unwrap();
    let total = (WRITERS - 1) * BLOBS / 2 + BLOBS;
    for i in 0..total {
        let b = blob(i, 1 + (i as usize * 37) % 20_000);
        assert_eq!(cas.read_blob(b.digest()).unwrap(), b.data(), "blob {i}");
        let result = cas.get_action_result(blob(i, 8).digest()).unwrap().unwrap();
        assert_eq!(result.exit_code, i as i32);
    }
    // Every object file hashes to its name.
    let mut objects = 0;
    for prefix in std::fs::read_dir(dir.path().join("cas/objects")).unwrap() {
        for entry in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let digest = sa_cas::DigestFunction::Sha256.hash_bytes(&data);
            let name = format!(
                "{}{}",
                path.parent().unwrap().file_name().unwrap().to_str().unwrap(),
                path.file_name().unwrap().to_str().unwrap()
            );
            assert_eq!(digest.hash_hex(), name);
            objects += 1;
        }
    }
    assert_eq!(objects, total);
    assert_eq!(std::fs::read_dir(dir.path().join("cas/tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("actioncache/tmp")).unwrap().count(), 0);
}
