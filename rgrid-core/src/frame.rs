//! Framing: a 4-byte big-endian length prefix and a postcard-encoded message, with a hard maximum
//! frame size. An oversize or undecodable frame is an error for that stream only; the caller
//! closes the stream and keeps serving others.

use std::marker::PhantomData;

use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Largest frame either side accepts: 64 MiB (a result carries up to 16 MiB of stdout and of
/// stderr).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// A stream-level protocol error.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame exceeds the maximum of {MAX_FRAME_BYTES} bytes")]
    TooLarge,
    /// Past the smaller limit of a reader made with [`FrameReader::with_limit`].
    #[error("frame exceeds this stream's maximum of {limit} bytes")]
    OverLimit { limit: usize },
    #[error("frame does not decode as {expected}: {source}")]
    Decode {
        expected: &'static str,
        source: postcard::Error,
    },
    /// The frame held a whole message and then more: a peer of another encoding, or garbage.
    #[error("frame has {extra} bytes after its {expected}")]
    TrailingBytes {
        expected: &'static str,
        extra: usize,
    },
    #[error("message does not encode: {0}")]
    Encode(postcard::Error),
    #[error("stream ended before a {expected} arrived")]
    Closed { expected: &'static str },
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

/// Reads typed frames from a byte stream.
pub struct FrameReader<R, T> {
    inner: FramedRead<R, LengthDelimitedCodec>,
    /// The largest frame this reader takes (the codec reserves a declared frame's length, so a
    /// peer that may not send much gets a reader with a small limit).
    limit: usize,
    _marker: PhantomData<fn() -> T>,
}

impl<R: AsyncRead + Unpin, T: DeserializeOwned> FrameReader<R, T> {
    pub fn new(reader: R) -> Self {
        Self::with_limit(reader, MAX_FRAME_BYTES)
    }

    /// A reader that takes frames of at most `limit` bytes (at most [`MAX_FRAME_BYTES`]).
    pub fn with_limit(reader: R, limit: usize) -> Self {
        let limit = limit.min(MAX_FRAME_BYTES);
        Self {
            inner: FramedRead::new(reader, codec(limit)),
            limit,
            _marker: PhantomData,
        }
    }

    /// The next message, or `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<T>, FrameError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(err)) if err.kind() == std::io::ErrorKind::InvalidData => {
                Err(if self.limit == MAX_FRAME_BYTES {
                    FrameError::TooLarge
                } else {
                    FrameError::OverLimit { limit: self.limit }
                })
            }
            Some(Err(err)) => Err(FrameError::Io(err)),
            Some(Ok(bytes)) => decode(&bytes).map(Some),
        }
    }

    /// The next message; a cleanly finished stream is an error here.
    pub async fn expect(&mut self) -> Result<T, FrameError> {
        self.next().await?.ok_or(FrameError::Closed {
            expected: short_type_name::<T>(),
        })
    }

    /// Gives the underlying reader back.
    pub fn into_inner(self) -> R {
        self.inner.into_inner()
    }

    /// The raw bytes after the frames read so far (an object after its header frame): what
    /// was buffered already, then the rest of the stream.
    pub fn into_raw(mut self) -> tokio::io::Chain<std::io::Cursor<bytes::BytesMut>, R> {
        let buffered = self.inner.read_buffer_mut().split();
        std::io::Cursor::new(buffered).chain(self.inner.into_inner())
    }

    /// The same reader, taking frames of at most `limit` bytes from now on (a stream whose
    /// frames are known to be small).
    pub fn limited(mut self, limit: usize) -> Self {
        self.limit = limit.min(MAX_FRAME_BYTES);
        self.inner.decoder_mut().set_max_frame_length(self.limit);
        self
    }

    /// The same stream, read as messages of another type from now on (keeps buffered bytes).
    pub fn retype<U>(self) -> FrameReader<R, U> {
        FrameReader {
            inner: self.inner,
            limit: self.limit,
            _marker: PhantomData,
        }
    }
}

/// Writes typed frames to a byte stream.
pub struct FrameWriter<W, T> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
    _marker: PhantomData<fn(T)>,
}

impl<W: AsyncWrite + Unpin, T: Serialize> FrameWriter<W, T> {
    pub fn new(writer: W) -> Self {
        Self {
            inner: FramedWrite::new(writer, codec(MAX_FRAME_BYTES)),
            _marker: PhantomData,
        }
    }

    /// Encodes and sends one message.
    pub async fn send(&mut self, message: &T) -> Result<(), FrameError> {
        let bytes = postcard::to_allocvec(message).map_err(FrameError::Encode)?;
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge);
        }
        self.inner
            .send(bytes::Bytes::from(bytes))
            .await
            .map_err(FrameError::Io)
    }

    /// Gives the underlying writer back.
    pub fn into_inner(self) -> W {
        self.inner.into_inner()
    }

    /// The same stream, written as messages of another type from now on.
    pub fn retype<U>(self) -> FrameWriter<W, U> {
        FrameWriter {
            inner: self.inner,
            _marker: PhantomData,
        }
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        self.inner.get_mut()
    }
}

/// Decodes one whole message: a frame must hold exactly one, with no bytes after it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let expected = short_type_name::<T>();
    let (message, rest) = postcard::take_from_bytes(bytes)
        .map_err(|source| FrameError::Decode { expected, source })?;
    if rest.is_empty() {
        Ok(message)
    } else {
        Err(FrameError::TrailingBytes {
            expected,
            extra: rest.len(),
        })
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Hello;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn round_trip_and_errors() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::<_, Hello>::new(a);
        let mut r = FrameReader::<_, Hello>::new(b);
        let hello = Hello {
            version: 1,
            agent: "t".into(),
        };
        w.send(&hello).await.expect("the frame is written");
        assert_eq!(r.next().await.expect("the frame is read"), Some(hello));

        // Undecodable: a valid length prefix with garbage inside.
        let raw = w.get_mut();
        raw.write_all(&[0, 0, 0, 1, 0xff])
            .await
            .expect("the bytes are written");
        assert!(matches!(r.next().await, Err(FrameError::Decode { .. })));

        // Oversize: the length prefix alone is enough to refuse it.
        let (a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::<_, Hello>::new(b);
        let mut a = a;
        a.write_all(&(MAX_FRAME_BYTES as u32 + 1).to_be_bytes())
            .await
            .expect("the bytes are written");
        assert!(matches!(r.next().await, Err(FrameError::TooLarge)));
    }

    #[tokio::test]
    async fn bytes_after_the_message_are_refused() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::<_, Hello>::new(b);
        // Hello { version: 1, agent: "a" } and one byte more.
        a.write_all(&[0, 0, 0, 4, 1, 1, b'a', 0])
            .await
            .expect("the bytes are written");
        let err = r.next().await.expect_err("a trailing byte");
        assert!(
            matches!(err, FrameError::TrailingBytes { extra: 1, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "frame has 1 bytes after its Hello");
        // The exact message alone decodes.
        assert_eq!(
            decode::<Hello>(&[1, 1, b'a']).expect("decodes"),
            Hello {
                version: 1,
                agent: "a".into()
            }
        );
    }

    #[tokio::test]
    async fn a_reader_with_a_small_limit_refuses_larger_frames() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::<_, Hello>::with_limit(b, 4096);
        a.write_all(&4097u32.to_be_bytes())
            .await
            .expect("the bytes are written");
        let err = r.next().await.expect_err("over the limit");
        assert!(
            matches!(err, FrameError::OverLimit { limit: 4096 }),
            "{err}"
        );
        assert!(err.to_string().contains("4096"), "{err}");
    }
}
