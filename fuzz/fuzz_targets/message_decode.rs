//! A frame body decoded as a `Message` (every message type of the protocol, the secure-aggregation
//! payloads included).
//!
//! Invariants: no panic; a decoded message re-encodes, and decode(encode(m)) encodes to the same
//! bytes (compared as bytes, since `f64` NaN is not equal to itself); the message fits the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medfed_protocol::codec::{CodecError, MAX_FRAME_LEN, decode_body, frame};

fuzz_target!(|data: &[u8]| {
    let message = match decode_body(data) {
        Ok(message) => message,
        Err(CodecError::Malformed(_) | CodecError::TrailingBytes { .. }) => return,
        Err(e) => panic!("unexpected decode error {e}"),
    };
    let bytes = frame(&message).expect("a decoded message re-encodes");
    assert!(bytes.len() - 4 <= MAX_FRAME_LEN);
    // Nothing is lost or invented: a decoded message is never longer than its input.
    assert!(
        bytes.len() - 4 <= data.len(),
        "re-encoding grew the message"
    );
    let again = decode_body(&bytes[4..]).expect("re-encoded message decodes");
    assert_eq!(
        frame(&again).expect("re-encodes"),
        bytes,
        "round trip changed the message"
    );
    let _ = (message.round(), message.kind());
});
