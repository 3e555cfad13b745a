//! The recording: one JSON line per recorded call, appended to one file per invocation.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

/// Recording files held open at once; more invocations reopen theirs on their next line.
const MAX_OPEN_FILES: usize = 64;

/// Appends JSON lines to `DIR/<invocation>.jsonl`, one `write` per line. Crash-safe: a killed
/// proxy, or a write that failed part way (a full disk), leaves at most one partial line,
/// which the next open of that file cuts off (a file whose write failed is reopened before its
/// next line) and [`read_recording`] skips wherever it is, so every file reads back line by
/// line. A file deleted or renamed (rotated) while open is noticed at the next line and
/// created anew.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    files: Mutex<HashMap<String, Open>>,
}

/// An open recording file and the identity of the file it was opened as.
#[derive(Debug)]
struct Open {
    file: File,
    identity: (u64, u64),
}

fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

/// The file name for an invocation id: itself when it is a plain name, else a digest of it.
/// The names the proxy uses itself, `unknown` (no `RequestMetadata`) and `id-<hex>` (a digest),
/// are never a client's plain name: a client that sends one gets a digest too, so no client
/// can write into another's file.
pub(crate) fn file_stem(invocation: Option<&str>) -> String {
    match invocation {
        None | Some("") => "unknown".into(),
        Some(id)
            if id.len() <= 128
                && !id.starts_with('.')
                && id != "unknown"
                && !id.starts_with("id-")
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            id.to_owned()
        }
        Some(id) => {
            let digest = sa_cas::DigestFunction::Sha256.hash_bytes(id.as_bytes());
            format!("id-{}", &digest.hash_hex()[..32])
        }
    }
}

impl Recorder {
    /// Records into `dir`, created if missing; a directory this process cannot create files
    /// in is refused now, not at the first call.
    pub fn new(dir: &Path) -> io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        tempfile::Builder::new().prefix(".sa-probe-").tempfile_in(dir).map_err(|err| {
            io::Error::new(err.kind(), format!("cannot create files in {}: {err}", dir.display()))
        })?;
        Ok(Recorder { dir: dir.to_path_buf(), files: Mutex::new(HashMap::new()) })
    }

    /// The file an invocation's lines go to.
    pub fn path(&self, invocation: Option<&str>) -> PathBuf {
        self.dir.join(format!("{}.jsonl", file_stem(invocation)))
    }

    /// Appends `line` to the invocation's file.
    pub fn append(&self, invocation: Option<&str>, line: &Value) -> io::Result<()> {
        let stem = file_stem(invocation);
        let mut text = line.to_string();
        text.push('\n');
        let path = self.dir.join(format!("{stem}.jsonl"));
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        // Deleted or rotated since it was opened: a new file at the path.
        let moved = files.get(&stem).is_some_and(|open| {
            std::fs::symlink_metadata(&path).map(|m| identity(&m)).ok() != Some(open.identity)
        });
        if moved {
            files.remove(&stem);
        }
        if !files.contains_key(&stem) {
            // Clients choose invocation ids: never hold more than a few files open.
            if files.len() >= MAX_OPEN_FILES {
                files.clear();
            }
            let file = open_repaired(&path)?;
            let identity = identity(&file.metadata()?);
            files.insert(stem.clone(), Open { file, identity });
        }
        let open = files.get_mut(&stem).expect("inserted above");
        let written = open.file.write_all(text.as_bytes());
        if written.is_err() {
            // Part of the line may be in the file: reopen (and cut it) before the next line.
            files.remove(&stem);
        }
        written
    }
}

/// Opens `path` for appending, first cutting off a partial last line (a writer killed
/// mid-line), so the next line starts on a line of its own.
fn open_repaired(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            let mut text = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut text)?;
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!(path = %path.display(), "cutting off a partial last line");
            file.set_len(keep as u64)?;
        }
    }
    Ok(file)
}

/// Appends a [`Recorder`]'s lines from a thread of its own, so that no request waits on the
/// file system: the forwarding path only hands a line over. At most `capacity` lines wait; past
/// that a line is dropped and counted (said once every 10 s), never queued without bound and
/// never waited for. Lines still waiting when the process is killed are lost.
#[derive(Debug)]
pub struct RecordWriter {
    sender: std::sync::mpsc::SyncSender<(Option<String>, Value)>,
    dropped: std::sync::atomic::AtomicU64,
    last_warning: Mutex<Option<std::time::Instant>>,
}

impl RecordWriter {
    /// Starts the writing thread for `recorder`.
    pub fn start(recorder: Recorder, capacity: usize) -> io::Result<RecordWriter> {
        let (sender, lines) = std::sync::mpsc::sync_channel::<(Option<String>, Value)>(capacity);
        std::thread::Builder::new().name("sa-proxy-recorder".into()).spawn(move || {
            // Ends when every sender is gone (the proxy stopped), after the last line.
            for (invocation, line) in lines {
                if let Err(err) = recorder.append(invocation.as_deref(), &line) {
                    tracing::error!(
                        "recording into {}: {err}",
                        recorder.path(invocation.as_deref()).display()
                    );
                }
            }
        })?;
        Ok(RecordWriter {
            sender,
            dropped: std::sync::atomic::AtomicU64::new(0),
            last_warning: Mutex::new(None),
        })
    }

    /// Hands `line` to the writing thread, without waiting.
    pub fn submit(&self, invocation: Option<&str>, line: Value) {
        use std::sync::atomic::Ordering;
        if self.sender.try_send((invocation.map(str::to_owned), line)).is_ok() {
            return;
        }
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(10)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!("the recording falls behind: {dropped} lines dropped so far");
        }
    }

    /// Lines dropped because the writing thread fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A recording read back.
#[derive(Debug, Default)]
pub struct Recording {
    /// Every complete line that parsed, in order.
    pub lines: Vec<Value>,
    /// The numbers (from 1) of complete lines that did not parse: partial lines a failed
    /// write left in the middle of the file, skipped.
    pub skipped: Vec<usize>,
}

/// Reads a recording back, counting its bytes as it reads (a pipe or a device is held to
/// `max_bytes` too): every complete line, parsed; a line that is not JSON (what a write that
/// failed part way leaves) is skipped and listed; a partial last line (a writer killed
/// mid-line) is ignored. A file over `max_bytes` is an error.
pub fn read_recording(path: &Path, max_bytes: u64) -> Result<Recording, sa_cas::BoundedReadError> {
    let data = sa_cas::read_bounded(path, max_bytes)?;
    let complete = match data.iter().rposition(|b| *b == b'\n') {
        Some(end) => &data[..=end],
        None => &[][..],
    };
    let mut recording = Recording::default();
    for (number, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(value) => recording.lines.push(value),
            Err(_) => recording.skipped.push(number + 1),
        }
    }
    Ok(recording)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use super::*;

    #[test]
    fn a_partial_last_line_is_cut_off_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(dir.path()).unwrap();
        recorder.append(Some("inv-1"), &serde_json::json!({"n": 1})).unwrap();
        drop(recorder);
        let path = dir.path().join("inv-1.jsonl");
        // A writer killed in the middle of its line.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"n\": 2, \"ha").unwrap();
        assert_eq!(
            read_recording(&path, 1 << 20).unwrap().lines,
            vec![serde_json::json!({"n": 1})]
        );
        let recorder = Recorder::new(dir.path()).unwrap();
        recorder.append(Some("inv-1"), &serde_json::json!({"n": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":3}\n");
    }

    #[test]
    fn the_writer_thread_appends_in_order_and_drops_past_its_capacity_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RecordWriter::start(Recorder::new(dir.path()).unwrap(), 4096).unwrap();
        for n in 0..100 {
            writer.submit(Some("inv"), serde_json::json!({ "n": n }));
        }
        let path = dir.path().join("inv.jsonl");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut lines = Vec::new();
        while lines.len() < 100 && std::time::Instant::now() < deadline {
            lines = read_recording(&path, 1 << 20).unwrap_or_default().lines;
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let numbers: Vec<i64> = lines.iter().map(|l| l["n"].as_i64().unwrap()).collect();
        assert_eq!(numbers, (0..100).collect::<Vec<_>>());
        assert_eq!(writer.dropped(), 0);
        // A writer whose thread cannot keep up (capacity 1, a flood): submit never blocks,
        // and what does not fit is counted.
        let flooded = RecordWriter::start(Recorder::new(dir.path()).unwrap(), 1).unwrap();
        for n in 0..10_000 {
            flooded.submit(Some("flood"), serde_json::json!({ "n": n }));
        }
        assert!(flooded.dropped() > 0, "some lines did not fit");
    }

    #[test]
    fn many_invocations_never_hold_many_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(dir.path()).unwrap();
        for round in 0..2 {
            for i in 0..200 {
                recorder
                    .append(Some(&format!("inv-{i}")), &serde_json::json!({"round": round}))
                    .unwrap();
                assert!(recorder.files.lock().unwrap().len() <= MAX_OPEN_FILES);
            }
        }
        let lines = read_recording(&dir.path().join("inv-7.jsonl"), 1 << 20).unwrap().lines;
        assert_eq!(lines, [serde_json::json!({"round": 0}), serde_json::json!({"round": 1})]);
    }

    #[test]
    fn a_broken_line_anywhere_is_skipped_and_named_and_a_large_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"a\": 1}\n{\"b\": tru\n{\"c\": 3}\n").unwrap();
        let recording = read_recording(&path, 1 << 20).unwrap();
        assert_eq!(recording.lines, [serde_json::json!({"a": 1}), serde_json::json!({"c": 3})]);
        assert_eq!(recording.skipped, [2]);
        let err = read_recording(&path, 10).unwrap_err().to_string();
        assert!(err.ends_with("holds more than 10 bytes"), "{err}");
        let err = read_recording(Path::new("/dev/zero"), 1 << 16).unwrap_err().to_string();
        assert!(err.ends_with("holds more than 65536 bytes"), "{err}");
    }

    /// A file whose writes fail part way: the first `allowed` bytes go in, then ENOSPC.
    #[test]
    fn after_a_failed_write_the_next_line_starts_on_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(dir.path()).unwrap();
        recorder.append(Some("inv"), &serde_json::json!({"n": 1})).unwrap();
        let path = dir.path().join("inv.jsonl");
        // What a full disk leaves: part of a line, written through the recorder's own file.
        {
            let mut files = recorder.files.lock().unwrap();
            files.get_mut("inv").unwrap().file.write_all(b"{\"n\": 2, \"par").unwrap();
            // The recorder saw the write fail: it drops the file.
            files.remove("inv");
        }
        recorder.append(Some("inv"), &serde_json::json!({"n": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":3}\n");
        assert_eq!(read_recording(&path, 1 << 20).unwrap().skipped, Vec::<usize>::new());
    }

    #[test]
    fn a_recording_deleted_or_rotated_while_open_is_created_anew() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(dir.path()).unwrap();
        let path = dir.path().join("inv.jsonl");
        recorder.append(Some("inv"), &serde_json::json!({"n": 1})).unwrap();
        std::fs::rename(&path, dir.path().join("inv.jsonl.1")).unwrap();
        recorder.append(Some("inv"), &serde_json::json!({"n": 2})).unwrap();
        std::fs::remove_file(&path).unwrap();
        recorder.append(Some("inv"), &serde_json::json!({"n": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
        let rotated = std::fs::read_to_string(dir.path().join("inv.jsonl.1")).unwrap();
        assert_eq!(rotated, "{\"n\":1}\n");
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("ro");
        std::fs::create_dir(&record).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        // A path under a file cannot be created, whoever runs the test (root included).
        let err = Recorder::new(&file.join("sub")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory, "{err}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o555)).unwrap();
        let running_as_root = rustix_is_root();
        let result = Recorder::new(&record);
        if running_as_root {
            // Root writes anywhere: the probe succeeds, which is the truth.
            assert!(result.is_ok());
        } else {
            let err = result.unwrap_err().to_string();
            assert!(err.starts_with(&format!("cannot create files in {}", record.display())));
        }
        // A read-only file system refuses root too.
        let err = Recorder::new(Path::new("/proc/sys")).unwrap_err().to_string();
        assert!(err.starts_with("cannot create files in /proc/sys"), "{err}");
    }

    fn rustix_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    }

    #[test]
    fn invocation_ids_become_safe_file_names() {
        assert_eq!(file_stem(None), "unknown");
        assert_eq!(file_stem(Some("5d2c-aa_b.1")), "5d2c-aa_b.1");
        for hostile in ["../x", "a/b", ".hidden", ""] {
            let stem = file_stem(Some(hostile));
            assert!(!stem.contains('/') && !stem.starts_with('.'), "{hostile}: {stem}");
        }
        // The proxy's own names are never a client's: `unknown` and a digest name are hashed.
        let hashed = file_stem(Some("../x"));
        for impostor in ["unknown", hashed.as_str()] {
            let stem = file_stem(Some(impostor));
            assert_ne!(stem, impostor);
            assert!(stem.starts_with("id-"), "{impostor}: {stem}");
        }
    }
}
