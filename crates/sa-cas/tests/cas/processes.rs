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

const KILL_ENV: &str = "SA_CAS_TEST_KILLED_WRITER_DIR";

/// Writers killed with SIGKILL at random moments (seeded, so a failure replays) leave only
/// whole objects; the temp files they leave are cleaned by the next open once stale, and a
/// following writer completes.
#[test]
fn writers_killed_at_random_moments_leave_no_partial_object() {
    if let Some(dir) = std::env::var_os(KILL_ENV) {
        let writer: u64 = std::env::var("SA_CAS_TEST_WRITER").unwrap().parse().unwrap();
        let rounds: u64 = std::env::var("SA_CAS_TEST_ITEMS").unwrap().parse().unwrap();
        let cas = LocalCas::open(dir, LocalCasConfig::default()).unwrap();
        for i in 0..rounds {
            // Sizes up to 2 MiB keep writes in flight long enough to be cut.
            let n = writer * 1_000_000 + i;
            let b = blob(n, 1 + (n as usize * 7919) % (2 << 20));
            cas.write_blobs(std::slice::from_ref(&b)).unwrap();
            let result = ActionResult { exit_code: n as i32, ..Default::default() };
            cas.update_action_result(blob(n, 8).digest(), &result).unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let spawn = |writer: u64, items: u64| {
        std::process::Command::new(&exe)
            .args([
                "--exact",
                "processes::writers_killed_at_random_moments_leave_no_partial_object",
            ])
            .args(["--test-threads=1"])
            .env(KILL_ENV, dir.path())
            .env("SA_CAS_TEST_WRITER", writer.to_string())
            .env("SA_CAS_TEST_ITEMS", items.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut seed: u64 = 0x5eed;
    let mut kills = 0;
    for round in 0..6u64 {
        let mut children: Vec<_> = (0..3).map(|w| spawn(round * 3 + w, 100_000)).collect();
        for child in &mut children {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            std::thread::sleep(std::time::Duration::from_millis(20 + (seed >> 33) % 180));
            child.kill().unwrap(); // SIGKILL
            let status = child.wait().unwrap();
            assert!(!status.success(), "the writer was killed, not finished");
            kills += 1;
        }
    }
    // Every object is whole: it hashes to its name; every result decodes.
    let mut objects = 0;
    for prefix in std::fs::read_dir(dir.path().join("cas/objects")).unwrap() {
        for entry in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let name = format!(
                "{}{}",
                path.parent().unwrap().file_name().unwrap().to_str().unwrap(),
                path.file_name().unwrap().to_str().unwrap()
            );
            assert_eq!(sa_cas::DigestFunction::Sha256.hash_bytes(&data).hash_hex(), name);
            objects += 1;
        }
    }
    let mut results = 0;
    for prefix in std::fs::read_dir(dir.path().join("actioncache/objects")).unwrap() {
        for entry in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            <ActionResult as prost::Message>::decode(data.as_slice()).unwrap();
            results += 1;
        }
    }
    assert!(objects > 0 && results > 0, "the writers got to write before being killed");
    // Age what the killed writers left, then a following run opens the store: it removes them.
    let mut left = 0;
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for tmp in ["cas/tmp", "actioncache/tmp"] {
        for entry in std::fs::read_dir(dir.path().join(tmp)).unwrap() {
            let file = std::fs::File::options().write(true).open(entry.unwrap().path()).unwrap();
            file.set_modified(two_hours_ago).unwrap();
            left += 1;
        }
    }
    let mut following = spawn(99, 20);
    assert!(following.wait().unwrap().success(), "a following writer completes");
    for tmp in ["cas/tmp", "actioncache/tmp"] {
        assert_eq!(std::fs::read_dir(dir.path().join(tmp)).unwrap().count(), 0, "{tmp} cleaned");
    }
    eprintln!(
        "crash safety: {kills} writers killed, {objects} objects and {results} results verified, {left} stale temp files cleaned"
    );
}
