//! PLD against RDP at the demo's settings: ε of each accountant, how much lower the PLD's is,
//! the σ each planner gives for ε = 8 at δ = 1e-5, and how long each call takes.
//!
//! ```text
//! cargo run --release -p medfed-protocol --example pld_vs_rdp
//! ```
//!
//! The demo node: q = 16/90 (batches of 16 from 90 training rows), 20 rounds of 12 DP-SGD steps.
//! "With counts" adds what a node that noises its evaluation counts also releases: before every
//! round and once at the end, 3 + 2A = 9 count cells moved by 1 at noise σ_e and the loss cell
//! moved by up to K = 256 at noise σ_e·K (A = 3 audited attributes), and a statistics release,
//! here a stand-in of 30 counts at noise 8.

use std::time::Instant;

use medfed_protocol::accounting::{Accountant, Mechanism, epsilon, noise_multiplier_for};

const Q: f64 = 16.0 / 90.0;
const ROUNDS: u64 = 20;
const STEPS_PER_ROUND: u64 = 12;
const DELTA: f64 = 1e-5;
const TARGET: f64 = 8.0;

fn training(sigma: f64) -> Mechanism {
    Mechanism::SubsampledGaussian {
        sample_rate: Q,
        noise_multiplier: sigma,
        steps: STEPS_PER_ROUND,
    }
}

/// The counts a node releases besides training, as its ledger would list them.
fn counts(eval_sigma: f64) -> Vec<Mechanism> {
    let evaluation = [
        Mechanism::DiscreteGaussian {
            sigma: eval_sigma,
            sensitivity: 1,
            cells: 9,
        },
        Mechanism::DiscreteGaussian {
            sigma: eval_sigma * 256.0,
            sensitivity: 256,
            cells: 1,
        },
    ];
    let mut out = vec![Mechanism::DiscreteGaussian {
        sigma: 8.0,
        sensitivity: 1,
        cells: 30,
    }];
    for _ in 0..=ROUNDS {
        out.extend(evaluation);
    }
    out
}

/// The ledger of the whole run: one training entry per round between the evaluation releases.
fn ledger(sigma: f64, eval_sigma: Option<f64>) -> Vec<Mechanism> {
    let mut out = Vec::new();
    let extra = eval_sigma.map(counts).unwrap_or_default();
    let mut extra = extra.into_iter();
    out.extend(extra.next());
    for _ in 0..ROUNDS {
        out.extend(extra.by_ref().take(2));
        out.push(training(sigma));
    }
    out.extend(extra);
    out
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64() * 1e3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("q = 16/90, {ROUNDS} rounds x {STEPS_PER_ROUND} steps, delta = {DELTA}");
    for eval_sigma in [None, Some(20.0)] {
        let label = match eval_sigma {
            None => "DP-SGD only".to_owned(),
            Some(s) => format!("with counts at noise {s}"),
        };
        for sigma in [1.0, 1.2, 1.5] {
            let releases = ledger(sigma, eval_sigma);
            let (rdp, rdp_ms) = timed(|| epsilon(Accountant::Rdp, &releases, DELTA));
            let (pld, pld_ms) = timed(|| epsilon(Accountant::Pld, &releases, DELTA));
            let (rdp, pld) = (rdp?, pld?);
            println!(
                "{label}, sigma {sigma}: RDP eps {rdp:.4} ({rdp_ms:.1} ms), PLD eps {pld:.4} \
                 ({pld_ms:.0} ms): {:.1} % lower",
                100.0 * (rdp - pld) / rdp
            );
        }
        let already = eval_sigma.map(counts).unwrap_or_default();
        let steps = ROUNDS * STEPS_PER_ROUND;
        for accountant in [Accountant::Rdp, Accountant::Pld] {
            let (sigma, ms) =
                timed(|| noise_multiplier_for(accountant, TARGET, DELTA, &already, Q, steps));
            let sigma = sigma?;
            let spent = epsilon(accountant, &ledger(sigma, eval_sigma), DELTA)?;
            println!(
                "{label}: {accountant} planner for eps {TARGET}: sigma {sigma:.4} \
                 (spends {spent:.4}; {ms:.0} ms)"
            );
        }
    }
    Ok(())
}
