//! The storage traits: a batch-first [`Cas`] and an [`ActionCache`].

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use sa_proto::reapi::ActionResult;

use crate::digest::{Digest, DigestFunction};
use crate::error::{CasError, io_error};
use crate::spool::BlobSink;

/// A blob and its digest, which agree by construction: [`Blob::new`] hashes the data, and
/// [`Blob::from_verified`] is for callers that have just verified it. Stores therefore do not
/// hash again on write.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob {
    digest: Digest,
    data: Bytes,
}

impl Blob {
    /// Hashes `data` with `function`.
    pub fn new(function: DigestFunction, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob { digest: function.hash_bytes(&data), data }
    }

    /// `data` hashed and checked against `expected`: the one "hash, compare, mismatch" check
    /// (a size that differs is `SizeMismatch`, a hash `DigestMismatch`).
    pub fn verified(expected: &Digest, data: impl Into<Bytes>) -> Result<Blob, CasError> {
        let blob = Blob::new(expected.function(), data);
        expected.verify(blob.digest())?;
        Ok(blob)
    }

    /// A blob whose digest the caller has just computed or verified.
    pub fn from_verified(digest: Digest, data: Bytes) -> Blob {
        debug_assert_eq!(digest.size(), data.len() as u64, "blob size and digest disagree");
        Blob { digest, data }
    }

    /// The encoding of `message` as a blob.
    pub fn from_message(function: DigestFunction, message: &impl Message) -> Blob {
        Blob::new(function, message.encode_to_vec())
    }

    /// The digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The content.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The content, by value.
    pub fn into_data(self) -> Bytes {
        self.data
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({})", self.digest)
    }
}

/// A content-addressable store. Batch calls are the primitive; single-blob helpers are default
/// methods. Implementations are blocking and may be called from many (rayon) threads at once.
///
/// Every read is checked against the digest's size; stores that can (the gRPC backend always,
/// the local store when configured) also verify the hash.
pub trait Cas: Send + Sync + fmt::Debug {
    /// The digest function of every blob in this store.
    fn digest_function(&self) -> DigestFunction;

    /// Reads blobs, in the order asked; fails naming the first missing or corrupt one.
    fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError>;

    /// Stores blobs; blobs already present are left as they are.
    fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError>;

    /// The digests, among those given, that the store lacks (in the order given, deduplicated).
    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError>;

    /// [`Cas::find_missing`] for a writer about to store what is missing (ingest): a store that
    /// can check what it holds also counts an object whose content does not hash to its name
    /// as missing, so the write replaces it (the local store hashes its objects; of a server,
    /// its word is all a client has).
    fn find_missing_for_write(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        self.find_missing(digests)
    }

    /// How many bytes one batch of reads or writes should carry at most.
    fn max_batch_bytes(&self) -> u64 {
        4 << 20
    }

    /// Streams one blob, which may be larger than memory, into `out`.
    fn read_blob_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> {
        let data = self.read_blob(digest)?;
        out.write_all(&data).map_err(io_error("<output>"))
    }

    /// Stores a file whose digest the caller computed; the content is verified on the way in.
    fn write_file(&self, digest: &Digest, path: &Path) -> Result<(), CasError> {
        check_function(self.digest_function(), digest)?;
        let data = std::fs::read(path).map_err(io_error(path))?;
        let blob = Blob::verified(digest, data)
            .map_err(|err| err.context(format!("storing {}", path.display())))?;
        self.write_blobs(&[blob])
    }

    /// A blob to be written in pieces, hashed as they come (see [`BlobSink`]); by default
    /// spooled to an unnamed temp file and stored with [`Cas::write_file`].
    fn spool(&self) -> Result<Box<dyn BlobSink + '_>, CasError> {
        Ok(Box::new(crate::spool::FileSink::new(self)?))
    }

    /// Reads one blob.
    fn read_blob(&self, digest: &Digest) -> Result<Bytes, CasError> {
        let mut blobs = self.read_blobs(std::slice::from_ref(digest))?;
        Ok(blobs.pop().expect("read_blobs returns one blob per digest"))
    }

    /// Stores one blob, returning its digest.
    fn write_blob(&self, data: Bytes) -> Result<Digest, CasError> {
        let blob = Blob::new(self.digest_function(), data);
        let digest = *blob.digest();
        self.write_blobs(&[blob])?;
        Ok(digest)
    }
}

/// Reads and decodes one message; `what` names the type in errors ("Action", "Command").
pub fn read_message<M: Message + Default>(
    cas: &(impl Cas + ?Sized),
    digest: &Digest,
    what: &'static str,
) -> Result<M, CasError> {
    decode_message(digest, cas.read_blob(digest)?, what)
}

/// Decodes the message read as `digest`; `what` names the type in errors.
pub fn decode_message<M: Message + Default>(
    digest: &Digest,
    data: Bytes,
    what: &'static str,
) -> Result<M, CasError> {
    M::decode(data).map_err(|source| CasError::Decode { what, digest: *digest, source })
}

/// Encodes and stores one message, returning its digest.
pub fn write_message(
    cas: &(impl Cas + ?Sized),
    message: &impl Message,
) -> Result<Digest, CasError> {
    cas.write_blob(message.encode_to_vec().into())
}

/// A cache from Action digests to their results.
pub trait ActionCache: Send + Sync + fmt::Debug {
    /// The result stored for `action`, if any.
    fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError>;

    /// Stores the result of `action`, replacing any earlier one.
    fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError>;
}

/// A CAS with an ActionCache: what the generator, instantiator and CLI work against.
pub trait Store: Cas + ActionCache {}

impl<T: Cas + ActionCache> Store for T {}

/// Checks that `digest` uses the store's function.
/// What a `find_missing` must ask about: the distinct digests, in the order first given,
/// without the empty blob (present in every store); each checked to be of `function`.
pub(crate) fn to_look_up(
    function: DigestFunction,
    digests: &[Digest],
) -> Result<Vec<Digest>, CasError> {
    let mut seen = std::collections::HashSet::with_capacity(digests.len());
    let mut out = Vec::with_capacity(digests.len());
    for digest in digests {
        check_function(function, digest)?;
        if !digest.is_empty_blob() && seen.insert(*digest) {
            out.push(*digest);
        }
    }
    Ok(out)
}

pub(crate) fn check_function(function: DigestFunction, digest: &Digest) -> Result<(), CasError> {
    if digest.function() == function {
        Ok(())
    } else {
        Err(CasError::WrongDigestFunction { digest: *digest, expected: function })
    }
}

/// Checks that `data` is the content of `digest`: always the size, the hash when `verify`.
pub(crate) fn check_content(digest: &Digest, data: &[u8], verify: bool) -> Result<(), CasError> {
    if data.len() as u64 != digest.size() {
        return Err(CasError::SizeMismatch { digest: *digest, actual: data.len() as u64 });
    }
    if verify {
        digest.verify(&digest.function().hash_bytes(data))?;
    }
    Ok(())
}

macro_rules! forward_store {
    ($($wrapper:ident),*) => {$(
        impl<T: Cas + ?Sized> Cas for $wrapper<T> {
            fn digest_function(&self) -> DigestFunction { (**self).digest_function() }
            fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> { (**self).read_blobs(digests) }
            fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError> { (**self).write_blobs(blobs) }
            fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> { (**self).find_missing(digests) }
            fn find_missing_for_write(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> { (**self).find_missing_for_write(digests) }
            fn max_batch_bytes(&self) -> u64 { (**self).max_batch_bytes() }
            fn read_blob_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> { (**self).read_blob_to(digest, out) }
            fn write_file(&self, digest: &Digest, path: &Path) -> Result<(), CasError> { (**self).write_file(digest, path) }
            fn spool(&self) -> Result<Box<dyn BlobSink + '_>, CasError> { (**self).spool() }
        }
        impl<T: ActionCache + ?Sized> ActionCache for $wrapper<T> {
            fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError> { (**self).get_action_result(action) }
            fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError> { (**self).update_action_result(action, result) }
        }
    )*};
}

// Boxed and shared stores are stores, so callers can choose a backend at run time.
forward_store!(Box, Arc);
