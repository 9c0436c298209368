//! Object uploads and downloads, each on a stream of its own (never a node's control stream):
//! a header frame, then the object's raw bytes, verified by the receiver (see
//! [`rgrid_core::object`]). The head holds at most a few parts of an object in memory at once.

use futures::StreamExt;
use quinn::{RecvStream, SendStream};
use rgrid_core::frame::{FrameReader, FrameWriter};
use rgrid_core::object::{Incoming, ObjectRef};
use rgrid_core::protocol::{ErrorKind, Request, Response};

use crate::objects::TransferFailed;
use crate::server::{error, respond, Shared};

fn refusal(failed: &TransferFailed) -> Response {
    let kind = match failed {
        TransferFailed::Quota { .. } => ErrorKind::QuotaExceeded,
        TransferFailed::Received(_) => ErrorKind::BadRequest,
        TransferFailed::NotFound(_) => ErrorKind::NotFound,
        TransferFailed::Store(_) => ErrorKind::Internal,
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
    let mut chunks = match shared.objects.read(object).await {
        Ok(chunks) => chunks,
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
    while let Some(chunk) = chunks.next().await {
        let written = match chunk {
            Ok(chunk) => send.write_all(&chunk).await.map_err(|e| e.to_string()),
            Err(err) => {
                tracing::error!(%object, error = %err, "cannot read a stored object");
                Err(err.to_string())
            }
        };
        if let Err(err) = written {
            tracing::debug!(%object, error = %err, "download cut");
            // The receiver sees a reset, not a short object it might take for whole.
            let _ = send.reset(1u32.into());
            return;
        }
    }
    let _ = send.finish();
}
