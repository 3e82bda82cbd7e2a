//! The coordinator's secure-aggregation states fed a stream of participants' messages and phase
//! deadlines (`ServerOp`s, bincode-encoded one after another; seeds are honest rounds).
//!
//! Invariants: no panic, whatever is received (including shares that rebuild nothing); a finished
//! round returns a vector of the round's length; an honest unmodified stream gives the exact sum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medfed_fuzz::{Server, ServerOp, round_params, take};
use medfed_protocol::secagg::ExpectKeys;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    // 4 participants with threshold 3, or 5 with threshold 2..=5.
    let params = if selector & 4 == 0 {
        round_params(4, 3)
    } else {
        round_params(5, 2 + usize::from(selector & 3))
    };
    let mut server = Server::Keys(ExpectKeys::new(params).expect("valid params"));
    let mut ops = 0;
    while let Some((op, after)) = take::<ServerOp>(rest) {
        rest = after;
        server = server.apply(op);
        ops += 1;
        if ops > 256 {
            break;
        }
    }
});
