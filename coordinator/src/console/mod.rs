//! The operator's view of a run: one [`Console`] that the listener and the training loop tell
//! what happens, which keeps the [`RunSummary`] (written to `summary.json` in the state folder
//! as the run moves on, served by the dashboard, read by `medfed-coordinator status`) and the
//! counters and histograms of the Prometheus metrics ([`metrics`]).
//!
//! It only ever holds what the coordinator already knows: connection states, the figures nodes
//! declare, and pooled sums. Recording an event takes one uncontended lock and touches no file,
//! except at the few points where the summary is written (a round completed, the run's state
//! changed), so it adds nothing measurable to a round.

pub mod metrics;
pub mod process;
pub mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use medfed_protocol::round::LeftOut;
use medfed_transport::TransportKind;
use serde::Serialize;
use tokio::sync::watch;
use tracing::warn;

use crate::registry::Registry;
use metrics::Metrics;
pub use summary::{
    CoordinatorInfo, CurrentRound, DroppedNode, FairnessVerdict, NodeState, NodeSummary,
    PooledEvaluation, RefusedSummary, ReleasedModel, RoundPhase, RoundSummary, RunState,
    RunSummary, SUMMARY_FILE, SUMMARY_FORMAT, TaskInfo, Totals,
};

/// The live state of a run, shared by the listener, the training loop and the dashboard.
#[derive(Debug)]
pub struct Console {
    inner: Mutex<Inner>,
    /// Bumped on every change; the dashboard's event streams wait on it.
    changes: watch::Sender<u64>,
    /// Where the summary is written; `None` keeps it in memory only.
    summary_path: Option<PathBuf>,
    /// Held while the summary file is written, so two writes never share its temporary file.
    writing: Mutex<()>,
    /// The connected nodes and the bytes received from each.
    registry: Arc<Registry>,
}

#[derive(Debug, Default)]
struct Inner {
    summary: RunSummary,
    metrics: Metrics,
    /// Bytes received from every node when the current attempt began.
    bytes_at_attempt_start: u64,
    /// When the current phase began.
    phase_started: Option<std::time::Instant>,
    /// Seconds per phase of the current attempt.
    phase_seconds: BTreeMap<String, f64>,
}

/// A round the training loop has applied, as the console records it.
#[derive(Debug)]
pub struct CompletedRound {
    /// The round.
    pub round: u64,
    /// Whose contributions are in its sum.
    pub participants: Vec<String>,
    /// Who was asked and left out, and why.
    pub dropped: Vec<(String, LeftOut)>,
    /// The ε and δ each participant declared.
    pub privacy: Vec<(String, f64, f64)>,
    /// The pooled evaluation of the model the round started from, when it evaluated.
    pub evaluation: Option<PooledEvaluation>,
    /// The fairness verdict on that model, when it was audited.
    pub fairness: Option<FairnessVerdict>,
    /// The round's audit report, relative to the state folder.
    pub report: Option<String>,
    /// Seconds the round took.
    pub seconds: f64,
    /// Seconds spent writing the checkpoint and committing the round.
    pub checkpoint_seconds: f64,
}

impl Console {
    /// A console for a run whose summary lives in `data_dir` (`None`: not written), over the
    /// nodes of `registry`.
    pub fn new(
        data_dir: Option<&Path>,
        registry: Arc<Registry>,
        coordinator: CoordinatorInfo,
        task: TaskInfo,
    ) -> Self {
        let summary = RunSummary {
            format: SUMMARY_FORMAT.to_owned(),
            updated_at_ms: now_ms(),
            coordinator,
            task,
            ..RunSummary::default()
        };
        let console = Self {
            inner: Mutex::new(Inner {
                summary,
                ..Inner::default()
            }),
            changes: watch::channel(0).0,
            summary_path: data_dir.map(|dir| dir.join(SUMMARY_FILE)),
            writing: Mutex::new(()),
            registry,
        };
        console.persist();
        console
    }

    /// A receiver that sees every change (its value is a change counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The summary now, with each node's bytes received brought up to date.
    pub fn summary(&self) -> RunSummary {
        let bytes = self.registry.bytes_received();
        let mut summary = self.lock().summary.clone();
        apply_bytes(&mut summary, &bytes);
        summary
    }

    /// The Prometheus exposition of the run's metrics and the process's resources.
    pub fn render_metrics(&self) -> String {
        let connected = self.registry.connected().len();
        let bytes: u64 = self.registry.bytes_received().values().sum();
        let inner = self.lock();
        inner.metrics.render(&inner.summary, connected, bytes)
    }

    /// The dashboard serves at `url`.
    pub fn set_dashboard(&self, url: String) {
        self.change(|inner| inner.summary.coordinator.dashboard = Some(url));
        self.persist();
    }

    /// The run moved to `state`; the summary file is rewritten.
    pub fn set_state(&self, state: RunState) {
        self.change(|inner| {
            inner.summary.state = state;
            if matches!(state, RunState::WaitingForNodes) {
                inner.summary.current = None;
            }
        });
        self.persist();
    }

    /// `name` was admitted.
    pub fn admitted(&self, name: &str, transport: TransportKind) {
        self.change(|inner| {
            let node = inner.summary.node_mut(&clean(name));
            node.state = NodeState::Connected;
            node.transport = Some(transport);
            node.reason = None;
            node.last_seen_ms = now_ms();
        });
    }

    /// `name`'s connection closed, for `reason`.
    pub fn disconnected(&self, name: &str, reason: &str) {
        self.change(|inner| {
            let node = inner.summary.node_mut(&clean(name));
            node.state = NodeState::Disconnected;
            node.reason = Some(clean(reason));
        });
    }

    /// A connection was refused at admission (the latest [`MAX_REFUSED_SUBJECTS`] subjects and
    /// reasons are kept): `subject` is its certificate's subject (`None`
    /// when the handshake failed before it), `kind` the reason's label, `detail` its words.
    pub fn refused(&self, subject: Option<&str>, kind: &str, detail: &str) {
        let subject = clean(subject.unwrap_or("unknown"));
        let (kind, detail) = (clean(kind), clean(detail));
        let (kind, detail) = (kind.as_str(), detail.as_str());
        self.change(|inner| {
            *inner
                .summary
                .totals
                .refusals
                .entry(kind.to_owned())
                .or_default() += 1;
            let refused = &mut inner.summary.refused;
            let at = match refused
                .iter()
                .position(|r| r.subject == subject && r.reason == kind)
            {
                Some(at) => at,
                None => {
                    let entry = RefusedSummary {
                        subject: subject.clone(),
                        reason: kind.to_owned(),
                        ..RefusedSummary::default()
                    };
                    // The subject comes from whoever connects (a self-signed certificate may
                    // claim any): at the cap, the entry seen least recently makes room.
                    if refused.len() >= MAX_REFUSED_SUBJECTS {
                        let oldest = refused
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, r)| r.last_at_ms)
                            .map_or(0, |(at, _)| at);
                        refused[oldest] = entry;
                        oldest
                    } else {
                        refused.push(entry);
                        refused.len() - 1
                    }
                }
            };
            let entry = &mut refused[at];
            entry.count += 1;
            entry.detail = detail.to_owned();
            entry.last_at_ms = now_ms();
        });
    }

    /// An attempt at `round` begins (it first waits for enough nodes).
    pub fn attempt_started(&self, round: u64, attempt: u32) {
        let bytes: u64 = self.registry.bytes_received().values().sum();
        self.change(|inner| {
            let now = now_ms();
            inner.bytes_at_attempt_start = bytes;
            inner.phase_seconds.clear();
            inner.phase_started = Some(std::time::Instant::now());
            inner.summary.current = Some(CurrentRound {
                round,
                attempt,
                phase: RoundPhase::WaitingForNodes,
                started_at_ms: now,
                phase_started_at_ms: now,
                deadline_at_ms: None,
            });
        });
    }

    /// The current attempt enters `phase`; its answers are due within `deadline`, if it awaits
    /// any. The phase before it is timed.
    pub fn phase(&self, phase: RoundPhase, deadline: Option<Duration>) {
        self.change(|inner| {
            let now = std::time::Instant::now();
            if let (Some(started), Some(current)) = (inner.phase_started, &inner.summary.current)
                && current.phase != RoundPhase::WaitingForNodes
            {
                let seconds = (now - started).as_secs_f64();
                inner.metrics.phase_finished(current.phase, seconds);
                *inner
                    .phase_seconds
                    .entry(current.phase.name().to_owned())
                    .or_default() += seconds;
            }
            inner.phase_started = Some(now);
            if let Some(current) = &mut inner.summary.current {
                let at = now_ms();
                current.phase = phase;
                current.phase_started_at_ms = at;
                current.deadline_at_ms = deadline.map(|d| at.saturating_add(d.as_millis() as i64));
            }
        });
    }

    /// `names` were asked in the current phase: they compute until they answer.
    pub fn asked<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        self.change(|inner| {
            for name in names {
                let node = inner.summary.node_mut(&clean(name));
                node.state = NodeState::Training;
                node.reason = None;
            }
        });
    }

    /// `name` answered the current phase, or was left out of the attempt for `left_out`.
    pub fn answered(&self, name: &str, left_out: Option<&LeftOut>) {
        self.change(|inner| {
            if let Some(why) = left_out {
                *inner
                    .summary
                    .totals
                    .dropouts
                    .entry(why.kind().to_owned())
                    .or_default() += 1;
            }
            let node = inner.summary.node_mut(&clean(name));
            node.last_seen_ms = now_ms();
            match left_out {
                None => node.state = NodeState::Answered,
                Some(why) => {
                    node.state = NodeState::Dropped;
                    node.reason = Some(clean(&why.to_string()));
                }
            }
        });
    }

    /// The current attempt failed; it is retried or the run gives up.
    pub fn attempt_failed(&self) {
        self.change(|inner| {
            inner.summary.totals.attempts_failed += 1;
            inner.metrics.attempt_failed();
        });
    }

    /// A training round was applied; the summary file is rewritten.
    pub fn round_completed(&self, completed: CompletedRound) {
        let bytes = self.registry.bytes_received();
        let total_bytes: u64 = bytes.values().sum();
        self.change(|inner| {
            // The phase in progress (applying the sum) ends here.
            if let (Some(started), Some(current)) =
                (inner.phase_started.take(), &inner.summary.current)
            {
                let seconds = started.elapsed().as_secs_f64();
                inner.metrics.phase_finished(current.phase, seconds);
                *inner
                    .phase_seconds
                    .entry(current.phase.name().to_owned())
                    .or_default() += seconds;
            }
            inner
                .metrics
                .round_completed(completed.seconds, completed.checkpoint_seconds);
            let summary = &mut inner.summary;
            for (name, epsilon, delta) in &completed.privacy {
                let node = summary.node_mut(name);
                node.epsilon = Some(*epsilon);
                node.delta = Some(*delta);
            }
            for name in &completed.participants {
                summary.node_mut(name).rounds_joined += 1;
            }
            for node in &mut summary.nodes {
                if matches!(node.state, NodeState::Answered | NodeState::Training) {
                    node.state = NodeState::Connected;
                }
            }
            summary.totals.rounds_completed += 1;
            summary.current = None;
            summary.rounds.push(RoundSummary {
                round: completed.round,
                participants: completed.participants,
                dropped: completed
                    .dropped
                    .iter()
                    .map(|(name, why)| DroppedNode {
                        name: clean(name),
                        reason: why.kind().to_owned(),
                        detail: clean(&why.to_string()),
                    })
                    .collect(),
                evaluation: completed.evaluation,
                fairness: completed.fairness,
                report: completed.report,
                seconds: completed.seconds,
                phase_seconds: std::mem::take(&mut inner.phase_seconds),
                checkpoint_seconds: completed.checkpoint_seconds,
                bytes_in: total_bytes.saturating_sub(inner.bytes_at_attempt_start),
                completed_at_ms: now_ms(),
            });
            if summary.rounds.len() > MAX_ROUNDS_KEPT {
                let excess = summary.rounds.len() - MAX_ROUNDS_KEPT;
                summary.rounds.drain(..excess);
            }
        });
        self.persist();
    }

    /// The final model was evaluated (`None`: no held-out examples, or it failed).
    pub fn final_evaluation(&self, evaluation: Option<PooledEvaluation>) {
        self.change(|inner| {
            inner.summary.final_evaluation = evaluation;
            inner.summary.current = None;
        });
    }

    /// The released model was written.
    pub fn released(&self, round: u64, file: PathBuf) {
        self.change(|inner| inner.summary.released = Some(ReleasedModel { round, file }));
    }

    /// The run ended: `Finished` (with why it stopped early, if it did) or `Failed` with why.
    /// The summary file is rewritten with the final byte counts.
    pub fn ended(&self, state: RunState, why: Option<String>) {
        let bytes = self.registry.bytes_received();
        self.change(|inner| {
            inner.summary.state = state;
            inner.summary.stopped = why.as_deref().map(clean);
            inner.summary.current = None;
            apply_bytes(&mut inner.summary, &bytes);
            inner.summary.totals.bytes_received = bytes.values().sum();
        });
        self.persist();
    }

    /// Writes the summary file, if there is one: atomically (a temporary file renamed over
    /// it), readable by its owner only (like the state beside it), not synced (it is rewritten
    /// at every round and rebuilt by a restarted run).
    pub fn persist(&self) {
        let Some(path) = &self.summary_path else {
            return;
        };
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let summary = self.summary();
        let result = serde_json::to_vec_pretty(&summary)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let temporary = path.with_extension("json.tmp");
                write_private(&temporary, &json)?;
                std::fs::rename(&temporary, path)
            });
        if let Err(e) = result {
            warn!(file = %path.display(), error = %e, "cannot write the run summary");
        }
    }

    /// Applies `edit` and tells the subscribers.
    fn change(&self, edit: impl FnOnce(&mut Inner)) {
        {
            let mut inner = self.lock();
            edit(&mut inner);
            inner.summary.updated_at_ms = now_ms();
        }
        self.changes.send_modify(|version| *version += 1);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `bytes` to a new or truncated file that only its owner may read (on Unix).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// Brings each node's bytes received, and the total, up to `bytes`.
fn apply_bytes(summary: &mut RunSummary, bytes: &BTreeMap<String, u64>) {
    for (name, received) in bytes {
        summary.node_mut(name).bytes_in = *received;
    }
    summary.totals.bytes_received = bytes.values().sum();
}

/// The name of an enum value's variant as serde writes it, in snake case: a metrics label for
/// a reason type that has no label of its own.
pub fn variant_label(value: &impl Serialize) -> String {
    let name = match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(serde_json::Value::Object(map)) => map.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    snake_case(&name)
}

/// The label of a TLS handshake's refusal of a client certificate: `certificate_revoked`,
/// `certificate_unknown_issuer`, `certificate_expired`, …, or `tls` for another failure.
pub fn tls_refusal_label(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(reason) => {
            let debug = format!("{reason:?}");
            let name: String = debug
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            format!("certificate_{}", snake_case(&name))
        }
        _ => "tls".to_owned(),
    }
}

/// `CamelCase` as `camel_case` (`other` when empty).
fn snake_case(name: &str) -> String {
    let mut label = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                label.push('_');
            }
            label.push(c.to_ascii_lowercase());
        } else {
            label.push(c);
        }
    }
    if label.is_empty() {
        label.push_str("other");
    }
    label
}

/// The most characters of one outside text (a node's reason, a certificate's subject, an
/// error) the summary keeps.
pub const MAX_TEXT_CHARS: usize = 240;

/// The most completed rounds the live summary keeps (the latest); every round stays in the
/// state store and the signed reports.
pub const MAX_ROUNDS_KEPT: usize = 1000;

/// Refused (subject, reason) pairs the summary keeps: subjects come from anyone who connects.
pub const MAX_REFUSED_SUBJECTS: usize = 256;

/// `text` as the summary keeps it: control characters (a terminal's escape sequences among
/// them) replaced by `�`, and at most [`MAX_TEXT_CHARS`] characters, marked `…` when cut. A
/// node or a peer's close reason can be long and hostile; the summary is copied to every
/// dashboard client and printed by `status`.
pub fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_TEXT_CHARS)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().nth(MAX_TEXT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
