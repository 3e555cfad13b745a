//! [`LocalCas`]: a store in a directory laid out exactly like buildbox-casd's (and BuildStream's
//! local cache), so the same directory works with casd, BuildStream and `sa`.
//!
//! ```text
//! ROOT/cas/objects/<2 hex>/<62 hex>          blobs, named by hash, read-only
//! ROOT/cas/tmp/                               temp files, renamed into objects/
//! ROOT/actioncache/objects/<2 hex>/<62 hex>  serialized ActionResults, named by action hash
//! ROOT/actioncache/tmp/
//! ```
//!
//! Every write goes to a temp file in the store's own tmp directory and is renamed into place,
//! so a reader (or a writer killed at any moment) never sees a partial object; concurrent
//! writers in several processes are safe because the content under a name is always the same.
//! Objects are not fsynced: a crash of the machine (not of the process) may lose recent writes,
//! which content addressing turns into misses, never into corrupt reads of the right size.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prost::Message;
use rayon::prelude::*;
use sa_proto::reapi::ActionResult;

use crate::digest::{CopyError, Digest, DigestFunction};
use crate::error::{CasError, io_error};
use crate::store::{ActionCache, Blob, Cas, check_content, check_function, to_look_up};

/// Prefix of the temp files this crate writes; only these are cleaned as stale.
/// What an object of the store holds: where it goes and with which mode.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A CAS blob: `cas/objects`, read-only (0444), as casd leaves them.
    Blob,
    /// An ActionCache entry: `actioncache/objects`, 0600.
    ActionResult,
}

const TMP_PREFIX: &str = "sa-tmp-";
/// Temp files of ours older than this are from dead writers and are removed on open.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);
/// Batches at least this long are read or written in parallel.
const PARALLEL_BATCH: usize = 8;

/// Options of a [`LocalCas`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalCasConfig {
    /// The digest function of the blobs in this directory.
    pub digest_function: DigestFunction,
    /// Hash every blob read and fail on a mismatch (sizes are always checked).
    pub verify_reads: bool,
}

impl Default for LocalCasConfig {
    fn default() -> Self {
        LocalCasConfig { digest_function: DigestFunction::Sha256, verify_reads: true }
    }
}

/// A casd-compatible store in a local directory. See the module documentation.
#[derive(Debug)]
pub struct LocalCas {
    root: PathBuf,
    config: LocalCasConfig,
}

/// The file at a store's root naming the digest function of its blobs.
const DIGEST_FUNCTION_FILE: &str = "digest-function";

/// The `digest-function` file's text, read without following a symlink and at most 64 bytes
/// of it (a name is a few): the store's directory is not trusted to hold what it should.
fn read_marker(root: &Path) -> Result<String, CasError> {
    use std::io::Read;
    let marker = root.join(DIGEST_FUNCTION_FILE);
    let dir = match crate::confined::ConfinedDir::open(root) {
        Ok(dir) => dir,
        // No store yet: no marker either.
        Err(CasError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(io_error(&marker)(io::ErrorKind::NotFound.into()));
        }
        Err(err) => return Err(err),
    };
    let file = dir.open_file(DIGEST_FUNCTION_FILE)?;
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).map_err(io_error(&marker))?;
    Ok(text)
}

impl LocalCas {
    /// Refuses a store whose blobs are of another digest function: its `digest-function` file
    /// (written by `sa` when it makes a store) says which; a store without one that holds
    /// objects was made by buildbox-casd or BuildStream, which use SHA-256 only.
    fn check_digest_function(&self) -> Result<(), CasError> {
        let marker = self.root.join(DIGEST_FUNCTION_FILE);
        let wanted = self.config.digest_function;
        let (holds, why) = match read_marker(&self.root) {
            Ok(text) => {
                let holds = text.trim().parse::<DigestFunction>().map_err(|_| CasError::Io {
                    path: marker.clone(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{:?} is not a digest function", text.trim()),
                    ),
                })?;
                (holds, "its digest-function file says so")
            }
            Err(CasError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let objects = self.cas_objects();
                let holds_objects = fs::read_dir(&objects)
                    .map(|mut entries| entries.next().is_some())
                    .unwrap_or(false);
                if !holds_objects {
                    return Ok(());
                }
                (DigestFunction::Sha256, "a buildbox-casd or BuildStream store, which use sha256")
            }
            Err(err) => return Err(err),
        };
        if holds == wanted {
            Ok(())
        } else {
            Err(CasError::StoreDigestFunction { path: self.root.clone(), holds, wanted, why })
        }
    }

    /// Writes the `digest-function` file of a store made here.
    fn mark_digest_function(&self) -> Result<(), CasError> {
        let marker = self.root.join(DIGEST_FUNCTION_FILE);
        // A temp name of this process's own: builds start many `sa record`s on a new store at
        // once, and a shared temp name made all but the first rename fail.
        let tmp = self.root.join(format!("{DIGEST_FUNCTION_FILE}.{}.tmp", std::process::id()));
        fs::write(&tmp, format!("{}\n", self.config.digest_function))
            .and_then(|()| fs::rename(&tmp, &marker))
            .map_err(io_error(&marker))
    }

    /// Opens (creating as needed) the store at `root`, removing stale temp files of ours.
    pub fn open(root: impl AsRef<Path>, config: LocalCasConfig) -> Result<LocalCas, CasError> {
        let root = root.as_ref().to_path_buf();
        let store = LocalCas { root, config };
        let new = !store.cas_objects().exists();
        store.check_digest_function()?;
        for dir in [store.cas_objects(), store.cas_tmp(), store.ac_objects(), store.ac_tmp()] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        if new {
            store.mark_digest_function()?;
        }
        store.clean_stale_temp_files(STALE_TMP_AGE)?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options the store was opened with.
    pub fn config(&self) -> LocalCasConfig {
        self.config
    }

    /// Removes temp files of ours older than `age` (left by writers that died).
    pub fn clean_stale_temp_files(&self, age: Duration) -> Result<usize, CasError> {
        let mut removed = 0;
        let now = SystemTime::now();
        for dir in [self.cas_tmp(), self.ac_tmp()] {
            for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
                let entry = entry.map_err(io_error(&dir))?;
                if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    continue;
                }
                let modified = entry.metadata().and_then(|m| m.modified());
                let stale = modified.map(|m| now.duration_since(m).unwrap_or_default() >= age);
                if stale.unwrap_or(false) {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                        Err(err) => return Err(io_error(entry.path())(err)),
                    }
                }
            }
        }
        Ok(removed)
    }

    /// The path of a blob's object file.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        object_path(&self.cas_objects(), digest)
    }

    /// The path of an action's result file.
    pub fn action_result_path(&self, action: &Digest) -> PathBuf {
        object_path(&self.ac_objects(), action)
    }

    fn cas_objects(&self) -> PathBuf {
        self.root.join("cas").join("objects")
    }

    fn cas_tmp(&self) -> PathBuf {
        self.root.join("cas").join("tmp")
    }

    fn ac_objects(&self) -> PathBuf {
        self.root.join("actioncache").join("objects")
    }

    fn ac_tmp(&self) -> PathBuf {
        self.root.join("actioncache").join("tmp")
    }

    fn read_one(&self, digest: &Digest) -> Result<Bytes, CasError> {
        check_function(self.config.digest_function, digest)?;
        if digest.is_empty_blob() {
            return Ok(Bytes::new());
        }
        let path = self.blob_path(digest);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(CasError::NotFound(*digest));
            }
            Err(err) => return Err(io_error(path)(err)),
        };
        check_content(digest, &data, self.config.verify_reads)
            .map_err(|err| self.corrupt(err, &path))?;
        Ok(Bytes::from(data))
    }

    /// A corrupt object's error, naming the file and the fix.
    fn corrupt(&self, err: CasError, path: &Path) -> CasError {
        err.context(format!(
            "object {} of the store at {} is corrupt: remove it, or write the blob again (a \
             write replaces an object that does not verify)",
            path.display(),
            self.root.display()
        ))
    }

    /// Whether the object of `digest` is present and verifies (size, then content). A
    /// present object that does not is logged: the caller replaces it.
    fn holds(&self, digest: &Digest) -> Result<bool, CasError> {
        if digest.is_empty_blob() {
            return Ok(true);
        }
        let path = self.blob_path(digest);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(io_error(path)(err)),
        };
        let actual = digest
            .function()
            .hash_reader(io::BufReader::with_capacity(256 << 10, file))
            .map_err(io_error(&path))?;
        if actual == *digest {
            return Ok(true);
        }
        tracing::warn!(
            path = %path.display(),
            "corrupt object in the local store (content hashes to {actual}): replacing it"
        );
        Ok(false)
    }

    fn write_one(&self, blob: &Blob) -> Result<(), CasError> {
        let digest = blob.digest();
        check_function(self.config.digest_function, digest)?;
        if self.holds(digest)? {
            return Ok(());
        }
        self.persist(digest, &self.cas_tmp(), Kind::Blob, |file| file.write_all(blob.data()))
    }

    /// Writes through a temp file in `tmp_dir`, then renames it to the object path of `kind`.
    fn persist(
        &self,
        digest: &Digest,
        tmp_dir: &Path,
        kind: Kind,
        fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
    ) -> Result<(), CasError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(tmp_dir)
            .map_err(io_error(tmp_dir))?;
        fill(tmp.as_file_mut()).map_err(io_error(tmp.path()))?;
        self.rename_into_place(digest, kind, tmp)
    }

    fn rename_into_place(
        &self,
        digest: &Digest,
        kind: Kind,
        tmp: tempfile::NamedTempFile,
    ) -> Result<(), CasError> {
        let (objects, mode) = match kind {
            Kind::Blob => (self.cas_objects(), 0o444),
            Kind::ActionResult => (self.ac_objects(), 0o600),
        };
        let target = object_path(&objects, digest);
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
            .map_err(io_error(tmp.path()))?;
        let tmp = match tmp.persist(&target) {
            Ok(_) => return Ok(()),
            Err(err) if err.error.kind() == io::ErrorKind::NotFound => err.file,
            Err(err) => return Err(io_error(&target)(err.error)),
        };
        // The prefix directory is missing (a store not made by casd or us): make it, retry.
        let parent = target.parent().expect("object paths have a prefix directory");
        fs::create_dir_all(parent).map_err(io_error(parent))?;
        tmp.persist(&target).map_err(|err| io_error(&target)(err.error))?;
        Ok(())
    }
}

impl LocalCas {
    /// Whether an object of the right size is there (a truncated one counts as missing, so
    /// it gets written again; content is verified on read and on write).
    fn present(&self, digest: &Digest) -> Result<bool, CasError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.len() == digest.size()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(io_error(path)(err)),
        }
    }
}

fn object_path(objects: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hash_hex();
    objects.join(&hex[..2]).join(&hex[2..])
}

impl Cas for LocalCas {
    fn digest_function(&self) -> DigestFunction {
        self.config.digest_function
    }

    fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> {
        if digests.len() >= PARALLEL_BATCH {
            digests.par_iter().map(|d| self.read_one(d)).collect()
        } else {
            digests.iter().map(|d| self.read_one(d)).collect()
        }
    }

    fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError> {
        if blobs.len() >= PARALLEL_BATCH {
            blobs.par_iter().try_for_each(|b| self.write_one(b))
        } else {
            blobs.iter().try_for_each(|b| self.write_one(b))
        }
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        let wanted = to_look_up(self.config.digest_function, digests)?;
        // One `statx` each: thousands of them after a rewrite, so in parallel as reads are.
        let absent = |digest: &Digest| Ok((!self.present(digest)?).then_some(*digest));
        let missing: Vec<Option<Digest>> = if wanted.len() >= PARALLEL_BATCH {
            wanted.par_iter().map(absent).collect::<Result<_, CasError>>()?
        } else {
            wanted.iter().map(absent).collect::<Result<_, CasError>>()?
        };
        Ok(missing.into_iter().flatten().collect())
    }

    fn find_missing_for_write(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        use rayon::prelude::*;
        let wanted = to_look_up(self.config.digest_function, digests)?;
        let missing: Vec<Option<Digest>> = wanted
            .par_iter()
            .map(|digest| {
                if !self.present(digest)? {
                    return Ok(Some(*digest));
                }
                let path = self.blob_path(digest);
                let actual = digest.function().hash_file(&path)?;
                if actual == *digest {
                    Ok(None)
                } else {
                    // Same size, other content: the write about to happen replaces it.
                    tracing::warn!(path = %path.display(), "corrupt object {digest}: rewriting it");
                    Ok(Some(*digest))
                }
            })
            .collect::<Result<_, CasError>>()?;
        Ok(missing.into_iter().flatten().collect())
    }

    fn max_batch_bytes(&self) -> u64 {
        // No transport limit: batches only bound memory.
        64 << 20
    }

    fn read_blob_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> {
        check_function(self.config.digest_function, digest)?;
        if digest.is_empty_blob() {
            return Ok(());
        }
        let path = self.blob_path(digest);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(CasError::NotFound(*digest));
            }
            Err(err) => return Err(io_error(path)(err)),
        };
        let actual = digest.function().copy_hashing(file, out).map_err(|err| match err {
            CopyError::Read(err) => io_error(&path)(err),
            CopyError::Write(err) => io_error("<output>")(err),
        })?;
        match digest.verify(&actual) {
            Err(err @ CasError::SizeMismatch { .. }) => Err(self.corrupt(err, &path)),
            Err(err) if self.config.verify_reads => Err(self.corrupt(err, &path)),
            _ => Ok(()),
        }
    }

    fn spool(&self) -> Result<Box<dyn crate::BlobSink + '_>, CasError> {
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(self.cas_tmp())
            .map_err(io_error(self.cas_tmp()))?;
        Ok(Box::new(LocalSink {
            cas: self,
            file: io::BufWriter::with_capacity(1 << 20, tmp),
            hasher: self.config.digest_function.hasher(),
        }))
    }

    fn write_file(&self, digest: &Digest, path: &Path) -> Result<(), CasError> {
        check_function(self.config.digest_function, digest)?;
        if self.holds(digest)? {
            return Ok(());
        }
        let mut source = fs::File::open(path).map_err(io_error(path))?;
        let mut actual = None;
        self.persist(digest, &self.cas_tmp(), Kind::Blob, |file| {
            let found =
                digest.function().copy_hashing(&mut source, file).map_err(CopyError::into_inner)?;
            actual = Some(found);
            if found == *digest {
                Ok(())
            } else {
                Err(io::Error::other("content changed while storing"))
            }
        })
        .map_err(|err| match actual {
            Some(actual) if actual != *digest => {
                CasError::DigestMismatch { expected: *digest, actual }
                    .context(format!("storing {}", path.display()))
            }
            _ => err,
        })
    }
}

/// A blob spooled into the store's own temp directory, hashed as it is written, renamed into
/// place on commit (a temp file left by a killed process is removed on the next open).
struct LocalSink<'a> {
    cas: &'a LocalCas,
    file: io::BufWriter<tempfile::NamedTempFile>,
    hasher: crate::digest::Hasher,
}

impl crate::BlobSink for LocalSink<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), CasError> {
        self.hasher.update(data);
        self.file.write_all(data).map_err(io_error(self.cas.cas_tmp()))
    }

    fn commit(self: Box<Self>) -> Result<Digest, CasError> {
        let LocalSink { cas, file, hasher } = *self;
        let tmp = file.into_inner().map_err(|e| io_error(cas.cas_tmp())(e.into_error()))?;
        let digest = hasher.finish();
        // Renamed over an object already there, not verified against it: these bytes hash to
        // the digest (hashed as they were written), the rename is atomic, and verifying would
        // read the object whole first (a large element's SpeculativeActions are hundreds of
        // MiB: storing them again took 0.45 s that way, 0.33 s now, the kernel freeing the
        // replaced file's pages).
        cas.rename_into_place(&digest, Kind::Blob, tmp)?;
        Ok(digest)
    }
}

impl ActionCache for LocalCas {
    fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError> {
        check_function(self.config.digest_function, action)?;
        let path = self.action_result_path(action);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error(path)(err)),
        };
        match ActionResult::decode(&data[..]) {
            Ok(result) => Ok(Some(result)),
            Err(err) => {
                // A cache must not fail a build: an entry that does not decode is a miss, and
                // the next update replaces it.
                tracing::warn!(
                    path = %path.display(),
                    "corrupt action cache entry ({err}): treated as a miss"
                );
                Ok(None)
            }
        }
    }

    fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError> {
        check_function(self.config.digest_function, action)?;
        let data = result.encode_to_vec();
        self.persist(action, &self.ac_tmp(), Kind::ActionResult, |file| file.write_all(&data))
    }
}
