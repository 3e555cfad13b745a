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
/// proxy leaves at most one partial last line, which the next open of that file cuts off and
/// [`read_recording`] ignores, so every file reads back line by line.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    files: Mutex<HashMap<String, File>>,
}

/// The file name for an invocation id: itself when it is a plain name, else a digest of it.
fn file_stem(invocation: Option<&str>) -> String {
    match invocation {
        None | Some("") => "unknown".into(),
        Some(id)
            if id.len() <= 128
                && !id.starts_with('.')
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
    /// Records into `dir`, created if missing.
    pub fn new(dir: &Path) -> io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
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
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if !files.contains_key(&stem) {
            // Clients choose invocation ids: never hold more than a few files open.
            if files.len() >= MAX_OPEN_FILES {
                files.clear();
            }
            let path = self.dir.join(format!("{stem}.jsonl"));
            files.insert(stem.clone(), open_repaired(&path)?);
        }
        let file = files.get_mut(&stem).expect("inserted above");
        file.write_all(text.as_bytes())
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

/// Reads a recording back: every complete line, parsed; a partial last line (a writer killed
/// mid-line) is ignored. A complete line that is not JSON is an error naming the line, and so is
/// a file larger than `max_bytes` (it is read into memory).
pub fn read_recording(path: &Path, max_bytes: u64) -> io::Result<Vec<Value>> {
    let size = std::fs::metadata(path)?.len();
    if size > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} has {size} bytes, more than the {max_bytes} a recording may have",
                path.display()
            ),
        ));
    }
    let mut text = String::with_capacity(size as usize);
    File::open(path)?.take(max_bytes).read_to_string(&mut text)?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} line {}: {err}", path.display(), number + 1),
                )
            })
        })
        .collect()
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
        assert_eq!(read_recording(&path, 1 << 20).unwrap(), vec![serde_json::json!({"n": 1})]);
        let recorder = Recorder::new(dir.path()).unwrap();
        recorder.append(Some("inv-1"), &serde_json::json!({"n": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":3}\n");
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
        let lines = read_recording(&dir.path().join("inv-7.jsonl"), 1 << 20).unwrap();
        assert_eq!(lines, [serde_json::json!({"round": 0}), serde_json::json!({"round": 1})]);
    }

    #[test]
    fn bad_recordings_are_errors_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"a\": 1}\nnot json\n").unwrap();
        let err = read_recording(&path, 1 << 20).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{} line 2: ", path.display())), "{err}");
        let err = read_recording(&path, 10).unwrap_err().to_string();
        assert!(err.contains("more than the 10 a recording may have"), "{err}");
    }

    #[test]
    fn invocation_ids_become_safe_file_names() {
        assert_eq!(file_stem(None), "unknown");
        assert_eq!(file_stem(Some("5d2c-aa_b.1")), "5d2c-aa_b.1");
        for hostile in ["../x", "a/b", ".hidden", ""] {
            let stem = file_stem(Some(hostile));
            assert!(!stem.contains('/') && !stem.starts_with('.'), "{hostile}: {stem}");
        }
    }
}
