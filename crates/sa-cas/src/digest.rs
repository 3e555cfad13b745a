//! Digests and digest functions: valid by construction, parsed once at the edge.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use sa_proto::reapi;
use sha2::Digest as _;

use crate::error::CasError;

/// Length of the hashes of every supported function, in bytes.
pub const HASH_LEN: usize = 32;

/// Files at least this large are hashed in parallel where the function allows it (BLAKE3).
const PARALLEL_HASH_THRESHOLD: u64 = 4 << 20;

/// A digest function a store uses. Both produce 32-byte hashes, so a [`Digest`] carries its
/// function: a SHA-256 digest never equals the BLAKE3 digest of the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum DigestFunction {
    /// SHA-256, REAPI's default and the only function buildbox-casd serves.
    #[default]
    Sha256,
    /// BLAKE3 (REAPI `DigestFunction.BLAKE3 = 9`).
    Blake3,
}

impl DigestFunction {
    /// Every supported function.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// The lower-case name used on the command line and in resource names.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// The REAPI enum value.
    pub fn to_proto(self) -> reapi::digest_function::Value {
        match self {
            DigestFunction::Sha256 => reapi::digest_function::Value::Sha256,
            DigestFunction::Blake3 => reapi::digest_function::Value::Blake3,
        }
    }

    /// From the REAPI enum value (as carried on the wire).
    pub fn from_proto(value: i32) -> Result<Self, CasError> {
        match reapi::digest_function::Value::try_from(value) {
            Ok(reapi::digest_function::Value::Sha256) => Ok(DigestFunction::Sha256),
            Ok(reapi::digest_function::Value::Blake3) => Ok(DigestFunction::Blake3),
            Ok(other) => Err(CasError::UnsupportedDigestFunction(other.as_str_name().to_owned())),
            Err(_) => Err(CasError::UnsupportedDigestFunction(format!("enum value {value}"))),
        }
    }

    /// Starts an incremental hash.
    pub fn hasher(self) -> Hasher {
        Hasher {
            function: self,
            state: match self {
                DigestFunction::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
                DigestFunction::Blake3 => HasherState::Blake3(Box::new(blake3::Hasher::new())),
            },
            size: 0,
        }
    }

    /// The digest of `data`.
    pub fn hash_bytes(self, data: &[u8]) -> Digest {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finish()
    }

    /// The digest of everything `reader` yields.
    pub fn hash_reader(self, reader: impl Read) -> std::io::Result<Digest> {
        self.copy_hashing(reader, std::io::sink()).map_err(CopyError::into_inner)
    }

    /// Copies everything `reader` yields to `writer` and returns its digest: one pass, each
    /// buffer hashed as it is written.
    pub fn copy_hashing(
        self,
        mut reader: impl Read,
        mut writer: impl std::io::Write,
    ) -> Result<Digest, CopyError> {
        let mut hasher = self.hasher();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(CopyError::Read(err)),
            }
        }
    }

    /// The digest of a file's contents; large files are hashed in parallel with BLAKE3.
    pub fn hash_file(self, path: &Path) -> Result<Digest, CasError> {
        let io_err = |source| CasError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if self == DigestFunction::Blake3 && len >= PARALLEL_HASH_THRESHOLD {
            let mut hasher = blake3::Hasher::new();
            hasher.update_mmap_rayon(path).map_err(io_err)?;
            let size = hasher.count();
            return Ok(Digest { function: self, hash: *hasher.finalize().as_bytes(), size });
        }
        self.hash_reader(file).map_err(io_err)
    }

    /// The digest of the empty blob, which every store holds without storing it.
    pub fn empty_digest(self) -> Digest {
        self.hash_bytes(&[])
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestFunction {
    type Err = CasError;

    fn from_str(s: &str) -> Result<Self, CasError> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" | "sha-256" => Ok(DigestFunction::Sha256),
            "blake3" => Ok(DigestFunction::Blake3),
            _ => Err(CasError::UnsupportedDigestFunction(s.to_owned())),
        }
    }
}

/// Which side of a [`DigestFunction::copy_hashing`] failed.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source.
    Read(std::io::Error),
    /// Writing the destination.
    Write(std::io::Error),
}

impl CopyError {
    /// The error, whichever side it came from.
    pub fn into_inner(self) -> std::io::Error {
        match self {
            CopyError::Read(err) | CopyError::Write(err) => err,
        }
    }
}

/// An incremental hash that also counts the bytes, yielding a [`Digest`].
pub struct Hasher {
    function: DigestFunction,
    state: HasherState,
    size: u64,
}

enum HasherState {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("function", &self.function)
            .field("size", &self.size)
            .finish()
    }
}

impl Hasher {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        match &mut self.state {
            HasherState::Sha256(h) => h.update(data),
            HasherState::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        let hash = match self.state {
            HasherState::Sha256(h) => h.finalize().into(),
            HasherState::Blake3(h) => *h.finalize().as_bytes(),
        };
        Digest { function: self.function, hash, size: self.size }
    }
}

/// A content digest: function, hash and size. Valid by construction: the hash has the
/// function's length and the size fits the proto's `int64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    function: DigestFunction,
    hash: [u8; HASH_LEN],
    size: u64,
}

impl Digest {
    /// Checks that content which hashed to `actual` is this digest's: `SizeMismatch` when the
    /// sizes differ, `DigestMismatch` when the hashes do. Every comparison of content with
    /// the digest it came under goes through here.
    pub fn verify(&self, actual: &Digest) -> Result<(), crate::CasError> {
        if actual.size() != self.size() {
            Err(crate::CasError::SizeMismatch { digest: *self, actual: actual.size() })
        } else if actual != self {
            Err(crate::CasError::DigestMismatch { expected: *self, actual: *actual })
        } else {
            Ok(())
        }
    }
    /// A digest from its parts; fails when `size` does not fit an `int64`.
    pub fn new(
        function: DigestFunction,
        hash: [u8; HASH_LEN],
        size: u64,
    ) -> Result<Self, CasError> {
        if size > i64::MAX as u64 {
            return Err(CasError::InvalidDigest {
                input: format!("{}/{size}", hex::encode(hash)),
                reason: "size does not fit in int64".into(),
            });
        }
        Ok(Digest { function, hash, size })
    }

    /// Parses `hash/size` (lower-case hex of the function's length; a decimal size).
    pub fn parse(function: DigestFunction, text: &str) -> Result<Self, CasError> {
        let invalid = |reason: &str| CasError::InvalidDigest {
            input: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (hash, size) = text.split_once('/').ok_or_else(|| invalid("expected <hash>/<size>"))?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("size is not a decimal number"));
        }
        // One text for one digest: `0141` and `141` would name the same blob.
        if size.len() > 1 && size.starts_with('0') {
            return Err(invalid("size has a leading zero (write it as a plain decimal)"));
        }
        let size: u64 = size.parse().map_err(|_| invalid("size does not fit in int64"))?;
        let hash = parse_hash(function, hash).map_err(|reason| invalid(&reason))?;
        Digest::new(function, hash, size).map_err(|_| invalid("size does not fit in int64"))
    }

    /// Converts a proto digest, validating it for `function`.
    pub fn from_proto(function: DigestFunction, proto: &reapi::Digest) -> Result<Self, CasError> {
        let invalid = |reason: String| CasError::InvalidDigest {
            input: format!("{}/{}", proto.hash, proto.size_bytes),
            reason,
        };
        let size =
            u64::try_from(proto.size_bytes).map_err(|_| invalid("size is negative".to_owned()))?;
        let hash = parse_hash(function, &proto.hash).map_err(invalid)?;
        Ok(Digest { function, hash, size })
    }

    /// The digest of a hash and size as a decoder found them (for borrowing decoders), or
    /// `None` where [`Digest::from_proto`] would fail.
    pub(crate) fn from_wire(function: DigestFunction, hash: &str, size_bytes: i64) -> Option<Self> {
        let size = u64::try_from(size_bytes).ok()?;
        let hash = parse_hash(function, hash).ok()?;
        Some(Digest { function, hash, size })
    }

    /// Converts an optional proto digest field, naming the field when it is absent.
    pub fn from_proto_field(
        function: DigestFunction,
        proto: Option<&reapi::Digest>,
        field: &'static str,
    ) -> Result<Self, CasError> {
        match proto {
            Some(proto) => Digest::from_proto(function, proto),
            None => Err(CasError::MissingField(field)),
        }
    }

    /// The proto form.
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest { hash: self.hash_hex(), size_bytes: self.size as i64 }
    }

    /// The digest function.
    pub fn function(&self) -> DigestFunction {
        self.function
    }

    /// The raw hash bytes.
    pub fn hash(&self) -> &[u8; HASH_LEN] {
        &self.hash
    }

    /// The hash as lower-case hex.
    pub fn hash_hex(&self) -> String {
        // Every proto Digest is built from this: a table beats a generic encoder here.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = Vec::with_capacity(HASH_LEN * 2);
        for byte in self.hash {
            text.push(DIGITS[usize::from(byte >> 4)]);
            text.push(DIGITS[usize::from(byte & 0x0f)]);
        }
        String::from_utf8(text).expect("hex digits are ASCII")
    }

    /// The blob size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this is the digest of the empty blob.
    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == self.function.empty_digest()
    }
}

/// The value of each lower-case hex digit; 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn parse_hash(function: DigestFunction, hash: &str) -> Result<[u8; HASH_LEN], String> {
    if hash.len() != HASH_LEN * 2 {
        return Err(format!(
            "hash has {} characters, {} needs {}",
            hash.len(),
            function,
            HASH_LEN * 2
        ));
    }
    // One pass over a lookup table: every file node of every tree goes through here.
    let mut out = [0u8; HASH_LEN];
    let bytes = hash.as_bytes();
    let mut invalid = 0u8;
    for (i, byte) in out.iter_mut().enumerate() {
        let high = HEX_VALUE[usize::from(bytes[2 * i])];
        let low = HEX_VALUE[usize::from(bytes[2 * i + 1])];
        invalid |= high | low;
        *byte = (high << 4) | low;
    }
    if invalid & 0xf0 != 0 {
        return Err("hash is not lower-case hex".to_owned());
    }
    Ok(out)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.function, self.hash_hex(), self.size)
    }
}
