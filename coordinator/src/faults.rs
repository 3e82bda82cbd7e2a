//! Test-only fault injection: with `danger_pause_at`, the coordinator stops at one point of a
//! round, says so on standard error and waits forever, so that a crash test can kill it exactly
//! there. Compiled in only with the `fault-injection` cargo feature, which release builds and
//! the demo do not enable; without it, a configuration that sets `danger_pause_at` is refused
//! ([`crate::config::ConfigError::FaultInjection`]) and this is a no-op.

use serde::Deserialize;

/// Whether this build can inject faults.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Pauses forever if `at` is this round and phase.
#[cfg(feature = "fault-injection")]
pub async fn pause(at: Option<PausePoint>, round: u64, phase: PausePhase) {
    if at != Some(PausePoint { round, phase }) {
        return;
    }
    tracing::warn!(round, %phase, "pausing on purpose (danger_pause_at)");
    eprintln!("DANGER: paused at round {round} phase {phase}");
    std::future::pending::<()>().await;
}

/// Without the `fault-injection` feature: nothing.
#[cfg(not(feature = "fault-injection"))]
pub async fn pause(_at: Option<PausePoint>, _round: u64, _phase: PausePhase) {}

/// Where a coordinator configured with `danger_pause_at` stops: it writes
/// `DANGER: paused at round {round} phase {phase}` to standard error and waits forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PausePoint {
    /// The round: 0 is the statistics round, `rounds + 1` the final evaluation.
    pub round: u64,
    /// The point within the round.
    pub phase: PausePhase,
}

/// A point within a round, in the order a round passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PausePhase {
    /// The round is begun in the state store; nothing has been sent.
    RoundStarted,
    /// The model has been pushed to the nodes that lacked it; `RoundStart` is not sent yet.
    ModelPushed,
    /// Every node's round keys are in (secure aggregation phase 1).
    KeysCollected,
    /// The encrypted shares are collected (phase 2); the deliveries are not sent yet.
    SharesRelayed,
    /// At least one masked input has been received and summed (phase 3).
    MaskedInputs,
    /// The masks are removed: the sum is known; nothing is written yet.
    Unmasked,
    /// The new model's checkpoint is written; the audit report is not.
    CheckpointWritten,
    /// The audit report is written; the round is not yet completed in the state store.
    ReportWritten,
    /// The round is completed in the state store; the next round has not begun.
    RoundCompleted,
}

impl PausePhase {
    /// Every phase, in round order.
    pub const ALL: [Self; 9] = [
        Self::RoundStarted,
        Self::ModelPushed,
        Self::KeysCollected,
        Self::SharesRelayed,
        Self::MaskedInputs,
        Self::Unmasked,
        Self::CheckpointWritten,
        Self::ReportWritten,
        Self::RoundCompleted,
    ];

    /// The name used in the configuration file and in the pause marker.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundStarted => "round_started",
            Self::ModelPushed => "model_pushed",
            Self::KeysCollected => "keys_collected",
            Self::SharesRelayed => "shares_relayed",
            Self::MaskedInputs => "masked_inputs",
            Self::Unmasked => "unmasked",
            Self::CheckpointWritten => "checkpoint_written",
            Self::ReportWritten => "report_written",
            Self::RoundCompleted => "round_completed",
        }
    }
}

impl std::fmt::Display for PausePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
