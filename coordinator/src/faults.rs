//! Test-only fault injection: with `danger_pause_at`, the coordinator stops at one point of a
//! round, says so on standard error and waits forever, so that a crash test can kill it exactly
//! there. Compiled in only with the `fault-injection` cargo feature, which release builds and
//! the demo do not enable; without it, a configuration that sets `danger_pause_at` is refused
//! ([`crate::config::ConfigError::FaultInjection`]) and this is a no-op.

use crate::config::{PausePhase, PausePoint};

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
