//! How long each phase of a secure-aggregation collection took, for the log: the operator's
//! view of where a round's time goes, and `scripts/bench`'s measure of what the consistency
//! round costs.

use std::time::Instant;

use tracing::info;

pub use medfed_protocol::round::Phase;

/// Wall-clock seconds per phase of one collection, measured lap by lap.
#[derive(Debug)]
pub struct PhaseClock {
    last: Instant,
    seconds: [f64; 5],
}

impl PhaseClock {
    /// Starts timing the first phase.
    pub fn start() -> Self {
        Self {
            last: Instant::now(),
            seconds: [0.0; 5],
        }
    }

    /// Ends `phase`: the time since the previous lap is its duration.
    pub fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.seconds[phase as usize] = (now - self.last).as_secs_f64();
        self.last = now;
    }

    /// Seconds `phase` took (0 until it has ended).
    pub fn seconds(&self, phase: Phase) -> f64 {
        self.seconds[phase as usize]
    }

    /// Logs every phase's duration, and the consistency round's share of the rest.
    pub fn log(&self, round: u64) {
        let [keys, shares, inputs, consistency, unmask] = self.seconds;
        let rest = keys + shares + inputs + unmask;
        info!(
            round,
            keys_s = keys,
            shares_s = shares,
            inputs_s = inputs,
            consistency_s = consistency,
            unmask_s = unmask,
            consistency_ratio = if rest > 0.0 { consistency / rest } else { 0.0 },
            "secure aggregation phases"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lap_is_charged_to_its_own_phase() {
        let mut clock = PhaseClock::start();
        std::thread::sleep(std::time::Duration::from_millis(20));
        clock.lap(Phase::Keys);
        clock.lap(Phase::Shares);
        // The sleep is the first phase's, not the second's.
        assert!(clock.seconds(Phase::Keys) >= 0.02);
        assert!(clock.seconds(Phase::Shares) < 0.02 || clock.seconds(Phase::Keys) >= 0.04);
        assert_eq!(clock.seconds(Phase::Consistency), 0.0);
    }
}
