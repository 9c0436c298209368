//! Frame and message decoding of every wire type, as the head and the node read them: the
//! first byte picks the type, the rest is the stream (length-prefixed frames) through the
//! real `FrameReader`. A message that decodes must encode again and decode to the same bytes.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use rgrid_core::frame::{decode, FrameReader, MAX_FRAME_BYTES};
use rgrid_core::log::LogFrame;
use rgrid_core::protocol::{
    AttemptReport, HeadMessage, Hello, HelloReply, NodeMessage, Request, Response,
};
use rgrid_core::transport::UNAUTHENTICATED_FRAME_BYTES;
use rgrid_core::TaskSpec;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn read<T: Serialize + DeserializeOwned + Debug>(stream: &[u8], limit: usize) {
    futures::executor::block_on(async {
        let mut reader = FrameReader::<_, T>::with_limit(stream, limit);
        while let Ok(Some(message)) = reader.next().await {
            round_trip(&message);
        }
    });
    // The same bytes as one frame's contents (a node's assignment blob, a stored spec).
    if let Ok(message) = decode::<T>(stream) {
        round_trip(&message);
    }
}

fn round_trip<T: Serialize + DeserializeOwned + Debug>(message: &T) {
    let bytes = postcard::to_allocvec(message).expect("a decoded message encodes");
    let again: T = decode(&bytes).expect("an encoded message decodes");
    let bytes_again = postcard::to_allocvec(&again).expect("encodes");
    assert_eq!(bytes, bytes_again, "{message:?} does not round-trip");
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, stream)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => read::<Hello>(stream, UNAUTHENTICATED_FRAME_BYTES),
        1 => read::<HelloReply>(stream, MAX_FRAME_BYTES),
        2 => read::<Request>(stream, UNAUTHENTICATED_FRAME_BYTES),
        3 => read::<Request>(stream, MAX_FRAME_BYTES),
        4 => read::<Response>(stream, MAX_FRAME_BYTES),
        5 => read::<HeadMessage>(stream, MAX_FRAME_BYTES),
        6 => read::<NodeMessage>(stream, MAX_FRAME_BYTES),
        _ => {
            read::<TaskSpec>(stream, MAX_FRAME_BYTES);
            read::<AttemptReport>(stream, MAX_FRAME_BYTES);
            read::<LogFrame>(stream, MAX_FRAME_BYTES);
        }
    }
});
