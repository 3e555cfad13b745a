//! Inputs read whole into memory (a graph, a recording, a certificate), counting their bytes
//! as they are read: the limit holds for `/dev/zero`, a pipe or a file that grows while it is
//! read, not only for what `stat` says.

use std::io::Read;
use std::path::{Path, PathBuf};

/// A bounded read that failed.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    /// The file could not be opened or read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file holds more than the limit (what was read so far is dropped).
    #[error("{} holds more than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit it exceeded.
        limit: u64,
    },
}

/// Reads the file at `path` whole, refusing it once more than `max_bytes` have been read.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>, BoundedReadError> {
    let io = |source| BoundedReadError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // The size `stat` reports only sizes the buffer (a pipe or /dev/zero reports 0); the
    // limit is enforced on what is read.
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0).min(max_bytes);
    let mut data = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut data).map_err(io)?;
    if data.len() as u64 > max_bytes {
        return Err(BoundedReadError::TooLarge { path: path.to_owned(), limit: max_bytes });
    }
    Ok(data)
}

/// [`read_bounded`] for text: bytes that are not UTF-8 are an `InvalidData` error.
pub fn read_bounded_text(path: &Path, max_bytes: u64) -> Result<String, BoundedReadError> {
    String::from_utf8(read_bounded(path, max_bytes)?).map_err(|err| BoundedReadError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, err.utf8_error()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use super::*;

    #[test]
    fn an_endless_device_is_refused_at_the_limit() {
        let err = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(matches!(err, BoundedReadError::TooLarge { limit, .. } if limit == 1 << 20));
        let err = read_bounded(Path::new("/dev/urandom"), 1000).unwrap_err();
        assert!(matches!(err, BoundedReadError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_file_at_the_limit_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap(), b"0123456789");
        let err = read_bounded(&path, 9).unwrap_err();
        assert_eq!(err.to_string(), format!("{} holds more than 9 bytes", path.display()));
    }

    #[test]
    fn a_pipe_is_counted_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut out = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
                // Ends with a broken pipe once the reader has refused the input.
                let _ = out.write_all(&vec![b'x'; 1 << 20]);
            })
        };
        let err = read_bounded(&fifo, 4096).unwrap_err();
        assert!(matches!(err, BoundedReadError::TooLarge { limit: 4096, .. }), "{err}");
        drop(err);
        writer.join().unwrap();
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = read_bounded(Path::new("/nonexistent/graph.json"), 10).unwrap_err();
        assert!(err.to_string().starts_with("reading /nonexistent/graph.json: "), "{err}");
    }
}
