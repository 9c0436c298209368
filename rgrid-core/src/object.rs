//! Objects: immutable blobs named by their content (SHA-256) and size.
//!
//! An object travels on a QUIC stream of its own, after the request or response frame that
//! names it: exactly `size` raw bytes, which the receiver hashes as they arrive
//! ([`Verifier`]) and refuses when the hash or the size differ. No side ever holds a whole
//! object in memory: senders and receivers move it in chunks of about [`CHUNK_BYTES`].

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of an object a sender reads, or a receiver buffers, at a time.
pub const CHUNK_BYTES: usize = 256 << 10;

/// Most objects one listing page may hold.
pub const MAX_PAGE_OBJECTS: u32 = 10_000;

/// An object: the SHA-256 of its content and its size in bytes.
///
/// Its text form, [`ObjectRef::to_string`], is `HEX-SIZE` (64 hex digits, a dash, the size), as
/// `rgrid put` prints it and `rgrid submit --input` takes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl ObjectRef {
    /// The object holding `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::default();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The hash in hex: the object's name in stores and caches.
    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The hash parsed from the 64 hex digits of [`ObjectRef::hex`].
    pub fn parse_hex(hex_digits: &str) -> Option<[u8; 32]> {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut sha256).ok()?;
        Some(sha256)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hex(), self.size)
    }
}

impl fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({self})")
    }
}

impl FromStr for ObjectRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("{s:?} is not an object id: expected 64 hex digits, a dash and the size in bytes (as `rgrid put` prints)")
        };
        let (hash, size) = s.trim().split_once('-').ok_or_else(bad)?;
        Ok(Self {
            sha256: Self::parse_hex(hash).ok_or_else(bad)?,
            size: size.parse().map_err(|_| bad())?,
        })
    }
}

/// An object with the name a task gave it: one of a task's outputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedObject {
    pub name: String,
    pub object: ObjectRef,
}

/// SHA-256 and length of bytes seen so far.
pub struct Hasher {
    context: Context,
    size: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self {
            context: Context::new(&SHA256),
            size: 0,
        }
    }
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object of everything seen.
    pub fn finish(self) -> ObjectRef {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(self.context.finish().as_ref());
        ObjectRef {
            sha256,
            size: self.size,
        }
    }
}

/// Why received bytes are not the object they were announced as.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("object {expected}: more than its {} bytes arrived", .expected.size)]
    TooLong { expected: ObjectRef },
    #[error("object {expected}: the stream ended after {got} of its {} bytes", .expected.size)]
    TooShort { expected: ObjectRef, got: u64 },
    #[error("object {expected}: the bytes that arrived hash to {}, not to its name", hex::encode(.got))]
    HashMismatch { expected: ObjectRef, got: [u8; 32] },
}

/// Checks bytes as they arrive against the object they should be.
pub struct Verifier {
    expected: ObjectRef,
    hasher: Hasher,
}

impl Verifier {
    pub fn new(expected: ObjectRef) -> Self {
        Self {
            expected,
            hasher: Hasher::default(),
        }
    }

    /// Takes the next chunk; refuses one that would make the object longer than announced.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), ObjectError> {
        if self.hasher.size + chunk.len() as u64 > self.expected.size {
            return Err(ObjectError::TooLong {
                expected: self.expected,
            });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.expected.size - self.hasher.size
    }

    /// After the last chunk: is it the announced object?
    pub fn finish(self) -> Result<ObjectRef, ObjectError> {
        let expected = self.expected;
        let got = self.hasher.finish();
        if got.size != expected.size {
            return Err(ObjectError::TooShort {
                expected,
                got: got.size,
            });
        }
        if got.sha256 != expected.sha256 {
            return Err(ObjectError::HashMismatch {
                expected,
                got: got.sha256,
            });
        }
        Ok(got)
    }
}

/// Why receiving an object failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("object transfer: {0}")]
    Io(#[from] std::io::Error),
}

/// An object arriving as raw bytes on `reader`, read in verified chunks.
pub struct Incoming<R> {
    reader: R,
    /// `None` once the end was read and verified.
    verifier: Option<Verifier>,
}

impl<R: AsyncRead + Unpin> Incoming<R> {
    pub fn new(reader: R, expected: ObjectRef) -> Self {
        Self {
            reader,
            verifier: Some(Verifier::new(expected)),
        }
    }

    /// The next chunk (at most [`CHUNK_BYTES`]), or `None` at the end of a stream that carried
    /// exactly the announced object. A stream that carries anything else ends in an error, at
    /// the latest when the stream ends: a receiver commits what it received only after `None`.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TransferError> {
        let Some(verifier) = self.verifier.as_mut() else {
            return Ok(None);
        };
        // One byte past the end tells an overlong stream from a finished one.
        let want = usize::try_from(verifier.remaining())
            .unwrap_or(usize::MAX)
            .clamp(1, CHUNK_BYTES);
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            let room = (want - buf.len()) as u64;
            if (&mut self.reader).take(room).read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        if buf.is_empty() {
            if let Some(verifier) = self.verifier.take() {
                verifier.finish()?;
            }
            return Ok(None);
        }
        verifier.update(&buf)?;
        Ok(Some(buf.freeze()))
    }
}

/// Which objects a listing shows: those whose hash comes after `after`, in hash order, at most
/// `limit` ([`MAX_PAGE_OBJECTS`] at most).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectQuery {
    pub after: Option<ObjectRef>,
    pub limit: u32,
}

impl Default for ObjectQuery {
    fn default() -> Self {
        Self {
            after: None,
            limit: 100,
        }
    }
}

/// An object as `rgrid objects` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub object: ObjectRef,
    /// When it was stored or last used (read, or uploaded again), milliseconds since the Unix
    /// epoch: retention counts from here.
    pub used_at_ms: u64,
    /// Open tasks that take it as an input (directly, or as a dependency's output they wait
    /// for): retention keeps it while there are any.
    pub tasks: u32,
    /// A client pinned it: retention keeps it until it is unpinned.
    pub pinned: bool,
}

/// One page of an object listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectPage {
    pub objects: Vec<ObjectInfo>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<ObjectRef>,
    /// Bytes the store holds in all, and its quota.
    pub stored_bytes: u64,
    pub quota_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_bad_ids_are_refused() {
        let object = ObjectRef::of(b"hello");
        assert_eq!(
            object.to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824-5"
        );
        assert_eq!(object.to_string().parse::<ObjectRef>(), Ok(object));
        for bad in ["", "abc-5", &format!("{}-x", object.hex()), &object.hex()] {
            let err = bad.parse::<ObjectRef>().expect_err("not an object id");
            assert!(err.contains("not an object id"), "{err}");
        }
    }

    #[test]
    fn the_verifier_refuses_what_is_not_the_object() {
        let object = ObjectRef::of(b"hello");
        let mut ok = Verifier::new(object);
        ok.update(b"hel").expect("a prefix");
        ok.update(b"lo").expect("the rest");
        assert_eq!(ok.finish(), Ok(object));

        let mut long = Verifier::new(object);
        assert!(matches!(
            long.update(b"hello!"),
            Err(ObjectError::TooLong { .. })
        ));
        let mut short = Verifier::new(object);
        short.update(b"hell").expect("a prefix");
        assert_eq!(short.remaining(), 1);
        assert!(matches!(
            short.finish(),
            Err(ObjectError::TooShort { got: 4, .. })
        ));
        let mut wrong = Verifier::new(object);
        wrong.update(b"jello").expect("the right length");
        assert!(matches!(
            wrong.finish(),
            Err(ObjectError::HashMismatch { .. })
        ));
    }
}
