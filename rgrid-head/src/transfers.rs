//! Object uploads and downloads, each on a stream of its own (never a node's control stream):
//! a header frame, then the object's raw bytes, verified by the receiver (see
//! [`rgrid_core::object`]). The head holds at most a few parts of an object in memory at once.

use quinn::{RecvStream, SendStream};
use rgrid_core::frame::{FrameReader, FrameWriter};
use rgrid_core::object::{Incoming, ObjectRef, CHUNK_BYTES};
use rgrid_core::protocol::{ErrorKind, Request, Response};
use tokio::io::BufReader;

use crate::objects::TransferFailed;
use crate::server::{error, respond, Shared};

/// The error answer for a failed transfer (or pin).
pub(crate) fn refusal(failed: &TransferFailed) -> Response {
    let kind = match failed {
        TransferFailed::Quota { .. } => ErrorKind::QuotaExceeded,
        TransferFailed::Received(_) => ErrorKind::BadRequest,
        TransferFailed::NotFound(_) => ErrorKind::NotFound,
        TransferFailed::Store(_) | TransferFailed::Pin(_) => ErrorKind::Internal,
    };
    error(kind, failed.to_string())
}

/// [`Request::PutObject`]: asks for the bytes unless the object is stored already or would
/// exceed the quota, then stores them once verified.
pub(crate) async fn put(
    object: ObjectRef,
    mut writer: FrameWriter<SendStream, Response>,
    reader: FrameReader<RecvStream, Request>,
    shared: &Shared,
) {
    let answer = match shared.objects.reserve(object) {
        Err(failed) => refusal(&failed),
        Ok(None) => Response::ObjectStored(object),
        Ok(Some(reservation)) => {
            if !respond(&mut writer, &Response::ObjectWanted).await {
                return;
            }
            let incoming = Incoming::new(reader.into_raw(), object);
            match shared.objects.store(reservation, incoming).await {
                Ok(()) => Response::ObjectStored(object),
                Err(failed) => {
                    tracing::info!(%object, error = %failed, "upload refused");
                    refusal(&failed)
                }
            }
        }
    };
    respond(&mut writer, &answer).await;
    let _ = writer.get_mut().finish();
}

/// [`Request::GetObject`]: the header, then the bytes as the store yields them.
pub(crate) async fn get(
    object: ObjectRef,
    mut writer: FrameWriter<SendStream, Response>,
    shared: &Shared,
) {
    let reader = match shared.objects.read(object).await {
        Ok(reader) => reader,
        Err(failed) => {
            respond(&mut writer, &refusal(&failed)).await;
            let _ = writer.get_mut().finish();
            return;
        }
    };
    if !respond(&mut writer, &Response::Object(object)).await {
        return;
    }
    let mut send = writer.into_inner();
    let mut reader = BufReader::with_capacity(CHUNK_BYTES, reader);
    match tokio::io::copy_buf(&mut reader, &mut send).await {
        Ok(_) => {
            let _ = send.finish();
        }
        Err(err) => {
            tracing::debug!(%object, error = %err, "download cut");
            // The receiver sees a reset, not a short object it might take for whole.
            let _ = send.reset(1u32.into());
        }
    }
}
