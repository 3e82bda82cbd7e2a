//! `medfed-coordinator status`: where a run stands, read from the coordinator's state folder
//! while it runs or after: its `summary.json` (the live view it keeps) and its SQLite state
//! (opened read-only, so the running coordinator is never disturbed).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::console::process::process_started_at_ms;
use crate::console::{RunState, RunSummary, SUMMARY_FILE, now_ms};
use crate::store::{NodeRow, RoundStatus, Store, StoreError};

/// What `status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CoordinatorStatus {
    /// The state folder.
    pub data_dir: PathBuf,
    /// Whether the coordinator that wrote the summary is still running.
    pub running: bool,
    /// The run summary, if a coordinator has written one.
    pub summary: Option<RunSummary>,
    /// What the state database holds, if it exists.
    pub store: Option<StoredState>,
}

/// What the state database holds over every run of the task.
#[derive(Clone, Debug, Serialize)]
pub struct StoredState {
    /// The last completed round, if any.
    pub last_completed_round: Option<u64>,
    /// Rounds completed.
    pub rounds_completed: u64,
    /// Rounds whose last attempt was aborted.
    pub rounds_aborted: u64,
    /// Every node seen, by certificate name.
    pub nodes: Vec<NodeRow>,
}

/// Why the status cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The summary file is unreadable.
    #[error(transparent)]
    Summary(#[from] crate::console::summary::SummaryError),
    /// The state database is unreadable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Neither exists: no coordinator has run with this state folder.
    #[error(
        "no coordinator has run with the state folder {0} (neither summary.json nor state.sqlite is there)"
    )]
    NothingThere(PathBuf),
}

/// Reads the status of the run whose state folder is `data_dir`.
pub fn read_status(data_dir: &Path) -> Result<CoordinatorStatus, StatusError> {
    let summary_path = data_dir.join(SUMMARY_FILE);
    let summary = if summary_path.exists() {
        Some(RunSummary::read(&summary_path)?)
    } else {
        None
    };
    let database = data_dir.join("state.sqlite");
    let store = if database.exists() {
        Some(stored_state(&Store::open_read_only(&database)?)?)
    } else {
        None
    };
    if summary.is_none() && store.is_none() {
        return Err(StatusError::NothingThere(data_dir.to_owned()));
    }
    let running = summary.as_ref().is_some_and(|s| {
        !matches!(s.state, RunState::Finished | RunState::Failed)
            && process_alive(s.coordinator.pid, s.coordinator.started_at_ms)
    });
    Ok(CoordinatorStatus {
        data_dir: data_dir.to_owned(),
        running,
        summary,
        store,
    })
}

fn stored_state(store: &Store) -> Result<StoredState, StoreError> {
    let rounds = store.rounds()?;
    let completed = rounds
        .iter()
        .filter(|r| r.status == RoundStatus::Completed)
        .count() as u64;
    Ok(StoredState {
        last_completed_round: store.last_completed_round()?.map(|r| r.round),
        rounds_completed: completed,
        rounds_aborted: rounds
            .iter()
            .filter(|r| r.status == RoundStatus::Aborted)
            .count() as u64,
        nodes: store.nodes()?,
    })
}

/// Whether the coordinator that recorded `pid` and started its run at `run_started_ms` still
/// runs: on Linux, a process `pid` exists and started before that run did (a process that
/// started after it is another one that reuses the number); elsewhere assumed.
fn process_alive(pid: u32, run_started_ms: i64) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    // A second of slack for the clock's and the tick's granularity.
    process_started_at_ms(pid).is_some_and(|started| started <= run_started_ms + 1000)
}

impl fmt::Display for CoordinatorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = now_ms();
        match &self.summary {
            Some(s) => {
                let c = &s.coordinator;
                if self.running {
                    write!(
                        f,
                        "coordinator: running (pid {}), listening on {}",
                        c.pid, c.listen
                    )?;
                } else {
                    write!(
                        f,
                        "coordinator: not running (pid {} last wrote {})",
                        c.pid,
                        ago(now, s.updated_at_ms)
                    )?;
                }
                if let Some(url) = &c.dashboard {
                    write!(f, ", dashboard {url}")?;
                }
                writeln!(f)?;
                let t = &s.task;
                writeln!(
                    f,
                    "task: {} ({} parameters), {} rounds planned, at least {} nodes a round, secure aggregation {}, manifest {}",
                    t.model,
                    t.parameters,
                    t.rounds_planned,
                    t.min_nodes,
                    if t.secure_aggregation { "on" } else { "off" },
                    t.manifest_digest.get(..16).unwrap_or(&t.manifest_digest)
                )?;
                write!(f, "state: {}", s.state.describe())?;
                if let Some(current) = &s.current {
                    write!(
                        f,
                        ", round {} attempt {}, {} for {}",
                        current.round,
                        current.attempt,
                        current.phase.name().replace('_', " "),
                        seconds(now - current.phase_started_at_ms)
                    )?;
                    if let Some(deadline) = current.deadline_at_ms {
                        write!(f, " (deadline in {})", seconds(deadline - now))?;
                    }
                }
                writeln!(f)?;
                if let Some(why) = &s.stopped {
                    writeln!(f, "  {why}")?;
                }
                writeln!(
                    f,
                    "rounds completed in this run: {} ({} attempts failed); {} bytes received",
                    s.totals.rounds_completed, s.totals.attempts_failed, s.totals.bytes_received
                )?;
                if let Some(e) = s.evaluations().last() {
                    writeln!(
                        f,
                        "last pooled evaluation: model of round {}: AUC {}, accuracy {:.4}, loss {:.4} ({} held-out examples)",
                        e.model_round,
                        e.auc.map_or_else(|| "n/a".into(), |a| format!("{a:.4}")),
                        e.accuracy,
                        e.loss,
                        e.examples
                    )?;
                }
                if let Some(released) = &s.released {
                    writeln!(
                        f,
                        "released model (round {}): {}",
                        released.round,
                        released.file.display()
                    )?;
                }
                writeln!(f, "nodes:")?;
                for node in &s.nodes {
                    let epsilon = match (node.epsilon, node.delta) {
                        (Some(e), Some(d)) => format!("ε {e:.3} (δ {d:e})"),
                        _ => "ε not declared".to_owned(),
                    };
                    write!(
                        f,
                        "  {:<20} {:<12} rounds {:<4} {epsilon}, {} bytes in, last seen {}",
                        node.name,
                        format!("{:?}", node.state).to_lowercase(),
                        node.rounds_joined,
                        node.bytes_in,
                        ago(now, node.last_seen_ms)
                    )?;
                    if let Some(transport) = node.transport {
                        write!(f, ", over {transport}")?;
                    }
                    if let Some(reason) = &node.reason {
                        write!(f, " ({reason})")?;
                    }
                    writeln!(f)?;
                }
                for refused in &s.refused {
                    writeln!(
                        f,
                        "refused: {} ({}) ×{}, last {}: {}",
                        refused.subject,
                        refused.reason,
                        refused.count,
                        ago(now, refused.last_at_ms),
                        refused.detail
                    )?;
                }
            }
            None => writeln!(
                f,
                "coordinator: no run summary in {} (written by a coordinator of this version once it starts)",
                self.data_dir.display()
            )?,
        }
        if let Some(store) = &self.store {
            write!(
                f,
                "state database: {} rounds completed",
                store.rounds_completed
            )?;
            if let Some(last) = store.last_completed_round {
                write!(f, " (last: round {last})")?;
            }
            writeln!(
                f,
                ", {} aborted, {} nodes seen over every run",
                store.rounds_aborted,
                store.nodes.len()
            )?;
        }
        Ok(())
    }
}

/// `ms` milliseconds as seconds in words.
fn seconds(ms: i64) -> String {
    format!("{:.1} s", ms.max(0) as f64 / 1000.0)
}

/// How long before `now` the time `at` was.
fn ago(now: i64, at: i64) -> String {
    if at <= 0 {
        return "never".to_owned();
    }
    format!("{} ago", seconds(now - at))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use medfed_transport::TransportKind;

    use crate::console::{Console, CoordinatorInfo, TaskInfo};
    use crate::registry::Registry;

    #[test]
    fn a_folder_without_a_run_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_status(dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
    }

    #[test]
    fn the_status_of_a_live_run_reads_its_summary_and_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.sqlite")).unwrap();
        store.node_seen("hospital-a", 5).unwrap();
        let console = Console::new(
            Some(dir.path()),
            Arc::new(Registry::default()),
            CoordinatorInfo {
                pid: std::process::id(),
                listen: "127.0.0.1:7400".into(),
                started_at_ms: now_ms(),
                ..CoordinatorInfo::default()
            },
            TaskInfo {
                model: "mlp 8".into(),
                rounds_planned: 5,
                ..TaskInfo::default()
            },
        );
        console.set_state(RunState::Training);
        console.admitted("hospital-a", TransportKind::Quic);
        console.persist();
        let status = read_status(dir.path()).unwrap();
        assert!(status.running, "this process wrote it and is alive");
        let text = status.to_string();
        assert!(text.contains("running (pid"), "{text}");
        assert!(text.contains("state: training"), "{text}");
        assert!(text.contains("hospital-a"), "{text}");
        assert!(text.contains("over quic"), "{text}");
        assert!(text.contains("1 nodes seen"), "{text}");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["summary"]["state"], "training");
        assert_eq!(json["store"]["nodes"][0]["identity"], "hospital-a");

        // A run that recorded a start before this process began was another process's, whose
        // number this one reuses: not running.
        let mut recycled = RunSummary::read(&dir.path().join(SUMMARY_FILE)).unwrap();
        recycled.coordinator.started_at_ms = 1_000;
        std::fs::write(
            dir.path().join(SUMMARY_FILE),
            serde_json::to_vec(&recycled).unwrap(),
        )
        .unwrap();
        assert!(!read_status(dir.path()).unwrap().running);

        console.ended(RunState::Finished, None);
        let after = read_status(dir.path()).unwrap();
        assert!(!after.running);
        assert!(after.to_string().contains("not running"));
    }
}
