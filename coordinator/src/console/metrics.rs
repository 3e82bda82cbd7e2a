//! The coordinator's Prometheus metrics: counters and histograms kept as the run moves on,
//! written in the text exposition format (version 0.0.4) when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::process::ProcessUsage;
use super::summary::{RoundPhase, RunSummary};

/// Upper bounds (seconds) of the duration histograms' buckets: from a millisecond to ten
/// minutes, roughly three a decade.
const DURATION_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    180.0, 600.0,
];

/// A cumulative histogram of durations, over buckets from a millisecond to ten minutes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        for (bound, count) in DURATION_BUCKETS.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the histogram's series under `name`, each with `labels` (`key="value"` pairs,
    /// already escaped, or empty).
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in DURATION_BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What the metrics keep beyond the run summary.
#[derive(Debug, Default)]
pub struct Metrics {
    round_seconds: Histogram,
    checkpoint_seconds: Histogram,
    phase_seconds: BTreeMap<RoundPhase, Histogram>,
    attempts_failed: u64,
}

impl Metrics {
    /// A phase of a round took `seconds`.
    pub fn phase_finished(&mut self, phase: RoundPhase, seconds: f64) {
        self.phase_seconds
            .entry(phase)
            .or_default()
            .observe(seconds);
    }

    /// A round completed in `seconds`, of which `checkpoint_seconds` writing its checkpoint
    /// and committing it.
    pub fn round_completed(&mut self, seconds: f64, checkpoint_seconds: f64) {
        self.round_seconds.observe(seconds);
        self.checkpoint_seconds.observe(checkpoint_seconds);
    }

    /// An attempt failed.
    pub fn attempt_failed(&mut self) {
        self.attempts_failed += 1;
    }

    /// The exposition: the run's metrics from `summary` and these histograms, `connected`
    /// nodes, `bytes_received` in all, and this process's resources.
    pub fn render(&self, summary: &RunSummary, connected: usize, bytes_received: u64) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let totals = &summary.totals;
        family(
            &mut out,
            "medfed_rounds_completed_total",
            "counter",
            "Training rounds completed by this coordinator process.",
        );
        let _ = writeln!(
            out,
            "medfed_rounds_completed_total {}",
            totals.rounds_completed
        );
        family(
            &mut out,
            "medfed_round_attempts_failed_total",
            "counter",
            "Round attempts that failed (retried, or the run gave up).",
        );
        let _ = writeln!(
            out,
            "medfed_round_attempts_failed_total {}",
            self.attempts_failed
        );
        family(
            &mut out,
            "medfed_rounds_planned",
            "gauge",
            "Training rounds the task plans.",
        );
        let _ = writeln!(out, "medfed_rounds_planned {}", summary.task.rounds_planned);
        family(
            &mut out,
            "medfed_current_round",
            "gauge",
            "The round in progress (0: statistics), or the last completed round between rounds.",
        );
        let current = summary
            .current
            .as_ref()
            .map(|c| c.round)
            .or_else(|| summary.rounds.last().map(|r| r.round))
            .unwrap_or(0);
        let _ = writeln!(out, "medfed_current_round {current}");
        family(
            &mut out,
            "medfed_round_duration_seconds",
            "histogram",
            "Wall-clock duration of completed training rounds.",
        );
        self.round_seconds
            .write(&mut out, "medfed_round_duration_seconds", "");
        family(
            &mut out,
            "medfed_round_phase_duration_seconds",
            "histogram",
            "Duration of each phase of completed round attempts.",
        );
        for (phase, histogram) in &self.phase_seconds {
            histogram.write(
                &mut out,
                "medfed_round_phase_duration_seconds",
                &format!("phase=\"{}\"", phase.name()),
            );
        }
        family(
            &mut out,
            "medfed_checkpoint_duration_seconds",
            "histogram",
            "Time to write a round's checkpoint and commit the round, fsyncs included.",
        );
        self.checkpoint_seconds
            .write(&mut out, "medfed_checkpoint_duration_seconds", "");
        family(
            &mut out,
            "medfed_nodes_connected",
            "gauge",
            "Nodes connected now.",
        );
        let _ = writeln!(out, "medfed_nodes_connected {connected}");
        family(
            &mut out,
            "medfed_node_dropouts_total",
            "counter",
            "Nodes left out of a round attempt, by reason.",
        );
        for (reason, count) in &totals.dropouts {
            let _ = writeln!(
                out,
                "medfed_node_dropouts_total{{reason=\"{}\"}} {count}",
                escape_label(reason)
            );
        }
        family(
            &mut out,
            "medfed_connections_refused_total",
            "counter",
            "Connections refused at admission, by reason.",
        );
        for (reason, count) in &totals.refusals {
            let _ = writeln!(
                out,
                "medfed_connections_refused_total{{reason=\"{}\"}} {count}",
                escape_label(reason)
            );
        }
        family(
            &mut out,
            "medfed_bytes_received_total",
            "counter",
            "Bytes received from the nodes on request streams.",
        );
        let _ = writeln!(out, "medfed_bytes_received_total {bytes_received}");
        if let Some(auc) = summary.evaluations().last().and_then(|e| e.auc) {
            family(
                &mut out,
                "medfed_pooled_auc",
                "gauge",
                "Pooled held-out AUC of the last model evaluated (a sum over hospitals).",
            );
            let _ = writeln!(out, "medfed_pooled_auc {auc}");
        }
        write_process(&mut out, &ProcessUsage::now());
        out
    }
}

/// The standard process metrics.
fn write_process(out: &mut String, usage: &ProcessUsage) {
    if let Some(rss) = usage.rss_bytes {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }
    if let Some(peak) = usage.peak_rss_bytes {
        family(
            out,
            "process_max_resident_memory_bytes",
            "gauge",
            "Peak resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_max_resident_memory_bytes {peak}");
    }
    if let (Some(user), Some(system)) = (usage.cpu_user_secs, usage.cpu_system_secs) {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {}", user + system);
    }
    if let Some(fds) = usage.open_fds {
        family(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {fds}");
    }
}

/// A metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and line feeds escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_cumulatively_with_sum_and_count() {
        let mut histogram = Histogram::default();
        histogram.observe(0.003);
        histogram.observe(2.0);
        histogram.observe(1000.0);
        let mut out = String::new();
        histogram.write(&mut out, "x", "phase=\"keys\"");
        assert!(out.contains("x_bucket{phase=\"keys\",le=\"0.0025\"} 0\n"));
        assert!(out.contains("x_bucket{phase=\"keys\",le=\"0.005\"} 1\n"));
        assert!(out.contains("x_bucket{phase=\"keys\",le=\"2.5\"} 2\n"));
        assert!(out.contains("x_bucket{phase=\"keys\",le=\"600\"} 2\n"));
        assert!(out.contains("x_bucket{phase=\"keys\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_sum{phase=\"keys\"} 1002.003\n"));
        assert!(out.contains("x_count{phase=\"keys\"} 3\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_sample_line_belongs_to_a_declared_family() {
        let mut metrics = Metrics::default();
        metrics.phase_finished(RoundPhase::Shares, 0.01);
        metrics.round_completed(0.5, 0.01);
        let mut summary = RunSummary::default();
        summary.totals.dropouts.insert("deadline".into(), 2);
        summary.totals.refusals.insert("handshake".into(), 1);
        let text = metrics.render(&summary, 3, 1234);
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|family| name == family
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name == format!("{family}{suffix}"))),
                    "{name} has no # TYPE line"
                );
            }
        }
        assert!(text.contains("medfed_nodes_connected 3\n"));
        assert!(text.contains("medfed_bytes_received_total 1234\n"));
        assert!(text.contains("medfed_node_dropouts_total{reason=\"deadline\"} 2\n"));
        assert!(text.contains("medfed_round_phase_duration_seconds_count{phase=\"shares\"} 1\n"));
    }
}
