//! A signed audit report file: parsing, signature and chain verification, and re-signing.
//!
//! Invariants: no panic; a parsed report reads back the same from its pretty form; a report that
//! verifies as a chain also verifies alone; and `SignedReport::sign` keeps its promise: whatever it
//! signs verifies (alone, and as the first report of a chain when it links to nothing).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medfed_protocol::report::{
    SignedReport, verify_chain, verify_checkpoint, verify_model, verify_signature,
};
use ring::signature::{Ed25519KeyPair, KeyPair};

fn key() -> &'static (Ed25519KeyPair, [u8; 32]) {
    static KEY: OnceLock<(Ed25519KeyPair, [u8; 32])> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let public = pair.public_key().as_ref().try_into().unwrap();
        (pair, public)
    })
}

fuzz_target!(|data: &[u8]| {
    let (pair, public) = key();
    let chain = verify_chain(&[data.to_vec()], public);
    let Ok(signed) = SignedReport::from_json(data) else {
        assert!(chain.is_err());
        return;
    };
    if chain.is_ok() {
        verify_signature(&signed, public).expect("a verified chain verifies alone");
    }
    let _ = verify_model(&signed.report, "00");
    let _ = verify_checkpoint(&signed.report, data);
    let _ = signed.sha256();
    if let Ok(pretty) = signed.to_json_pretty() {
        let again = SignedReport::from_json(&pretty).expect("the pretty form parses");
        assert_eq!(again, signed);
    }
    if let Ok(resigned) = SignedReport::sign(signed.report.clone(), pair) {
        verify_signature(&resigned, public).expect("what sign() signs verifies");
        if resigned.report.previous_report_sha256.is_none() {
            let file = resigned.to_json_pretty().expect("pretty form");
            verify_chain(&[file], public).expect("what sign() signs verifies as a chain");
        }
    }
});
