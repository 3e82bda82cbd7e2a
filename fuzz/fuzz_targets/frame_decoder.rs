//! The incremental frame decoder fed a byte stream in arbitrary chunks, with several caps.
//!
//! Invariants: no panic; every frame accepted is at most the cap; what is decoded does not depend
//! on how the stream was cut into chunks; every decoded message re-encodes to a frame that decodes
//! to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medfed_protocol::codec::{CodecError, FrameDecoder, MAX_FRAME_LEN, decode_body, frame};
use medfed_protocol::messages::Message;

const CAPS: [usize; 4] = [16, 300, 4096, MAX_FRAME_LEN];

/// Decodes `stream` fed in the given chunk sizes; returns the re-encoded frames of the messages
/// and how the stream ended.
fn run(stream: &[u8], cap: usize, chunk_sizes: &mut dyn FnMut() -> usize) -> (Vec<Vec<u8>>, bool) {
    let mut decoder = FrameDecoder::new(cap);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let take = chunk_sizes().clamp(1, rest.len());
        decoder.feed(&rest[..take]);
        rest = &rest[take..];
        loop {
            match decoder.check() {
                Ok(Some(total)) => assert!(total - 4 <= cap, "frame of {total} over cap {cap}"),
                Ok(None) => break,
                Err(CodecError::FrameTooLarge { len, max }) => {
                    assert!(len > cap && max == cap);
                    return (out, false);
                }
                Err(e) => panic!("check() can only refuse a size: {e}"),
            }
            match decoder.next_message() {
                Ok(Some(message)) => out.push(reencode(&message)),
                Ok(None) => unreachable!("check() said a frame is buffered"),
                Err(_) => return (out, false),
            }
        }
    }
    (out, decoder.finish().is_ok())
}

fn reencode(message: &Message) -> Vec<u8> {
    let bytes = frame(message).expect("a decoded message re-encodes");
    let again = decode_body(&bytes[4..]).expect("a re-encoded message decodes");
    assert_eq!(frame(&again).expect("re-encodes"), bytes);
    let _ = (message.round(), message.kind());
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let cap = CAPS[usize::from(selector & 3)];
    let mut seed = u32::from(selector >> 2) | 1;
    let mut chunked = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (seed >> 16) as usize % 64
    };
    let chunked_result = run(stream, cap, &mut chunked);
    let whole_result = run(stream, cap, &mut || usize::MAX);
    assert_eq!(chunked_result, whole_result, "chunking changed the outcome");
});
