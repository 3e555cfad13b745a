//! Blobs written in pieces: a producer of a blob larger than it wants to hold in memory (a
//! large element's `SpeculativeActions`) writes into a [`BlobSink`] from [`Cas::spool`]; the
//! bytes are hashed as they come and go to a temp file, and `commit` stores them under the
//! digest they have.

use std::io::{Seek, Write};

use crate::confined::ConfinedDir;
use crate::digest::{Digest, Hasher};
use crate::error::{CasError, io_error};
use crate::store::Cas;

/// A blob being written; [`BlobSink::commit`] stores it and returns its digest. Dropping a sink
/// stores nothing and leaves nothing behind.
pub trait BlobSink: Send {
    /// Appends bytes.
    fn write(&mut self, data: &[u8]) -> Result<(), CasError>;
    /// Stores what was written; returns its digest.
    fn commit(self: Box<Self>) -> Result<Digest, CasError>;
}

/// The default [`BlobSink`]: an unnamed temp file (removed by the kernel however the process
/// ends), handed to [`Cas::write_file`] on commit.
pub(crate) struct FileSink<'a, S: Cas + ?Sized> {
    cas: &'a S,
    file: std::io::BufWriter<std::fs::File>,
    hasher: Hasher,
}

impl<'a, S: Cas + ?Sized> FileSink<'a, S> {
    pub(crate) fn new(cas: &'a S) -> Result<Self, CasError> {
        let file = tempfile::tempfile().map_err(io_error(std::env::temp_dir()))?;
        let hasher = cas.digest_function().hasher();
        Ok(FileSink { cas, file: std::io::BufWriter::with_capacity(1 << 20, file), hasher })
    }
}

impl<S: Cas + ?Sized> BlobSink for FileSink<'_, S> {
    fn write(&mut self, data: &[u8]) -> Result<(), CasError> {
        self.hasher.update(data);
        self.file.write_all(data).map_err(io_error("<spooled blob>"))
    }

    fn commit(self: Box<Self>) -> Result<Digest, CasError> {
        let FileSink { cas, file, hasher } = *self;
        let mut file = file.into_inner().map_err(|e| io_error("<spooled blob>")(e.into_error()))?;
        file.rewind().map_err(io_error("<spooled blob>"))?;
        let digest = hasher.finish();
        cas.write_file(&digest, &ConfinedDir::fd_path(&file))?;
        Ok(digest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{DigestFunction, LocalCas, LocalCasConfig, MemoryCas, Metered};

    fn spool_three_pieces(cas: &dyn Cas) -> Digest {
        let mut sink = cas.spool().unwrap();
        for piece in [&b"one "[..], b"two ", b"three"] {
            sink.write(piece).unwrap();
        }
        sink.commit().unwrap()
    }

    #[test]
    fn a_spooled_blob_is_stored_under_the_digest_of_its_pieces() {
        let expected = DigestFunction::Sha256.hash_bytes(b"one two three");
        let memory = MemoryCas::new(DigestFunction::Sha256);
        assert_eq!(spool_three_pieces(&memory), expected);
        assert_eq!(&memory.read_blob(&expected).unwrap()[..], b"one two three");

        let dir = tempfile::tempdir().unwrap();
        let local = Metered::new(LocalCas::open(dir.path(), LocalCasConfig::default()).unwrap());
        assert_eq!(spool_three_pieces(&local), expected);
        // Again: the object is there already.
        assert_eq!(spool_three_pieces(&local), expected);
        assert_eq!(&local.read_blob(&expected).unwrap()[..], b"one two three");
        let stats = local.stats();
        assert_eq!((stats.blobs_written, stats.bytes_written), (2, 26));
        // A sink dropped before commit stores nothing and leaves no temp file.
        let mut sink = local.spool().unwrap();
        sink.write(b"abandoned").unwrap();
        drop(sink);
        let abandoned = DigestFunction::Sha256.hash_bytes(b"abandoned");
        assert!(local.read_blob(&abandoned).is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("cas/tmp")).unwrap().count(), 0);
    }
}
