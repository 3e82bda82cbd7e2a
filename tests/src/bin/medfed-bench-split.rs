//! `medfed-bench-split ROWS HOLDOUT_FRACTION SEED`: prints the indices (0-based, ascending) of the
//! rows a medfed node holds out of a file of `ROWS` patients, one per line, computed by the
//! node's own [`medfed_node::data::split_indices`]. `scripts/bench` gives Flower's nodes exactly
//! these rows to evaluate on.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rows, fraction, seed] = args.as_slice() else {
        eprintln!("usage: medfed-bench-split ROWS HOLDOUT_FRACTION SEED");
        return ExitCode::from(2);
    };
    let (Ok(rows), Ok(fraction), Ok(seed)) = (
        rows.parse::<usize>(),
        fraction.parse::<f64>(),
        seed.parse::<u64>(),
    ) else {
        eprintln!(
            "medfed-bench-split: ROWS and SEED must be whole numbers, HOLDOUT_FRACTION a number"
        );
        return ExitCode::from(2);
    };
    if !(0.0..1.0).contains(&fraction) {
        eprintln!("medfed-bench-split: HOLDOUT_FRACTION must be in [0, 1), not {fraction}");
        return ExitCode::from(2);
    }
    let (_, held_out) = medfed_node::data::split_indices(rows, fraction, seed);
    for i in held_out {
        println!("{i}");
    }
    ExitCode::SUCCESS
}
