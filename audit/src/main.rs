//! `medfed-audit`: what an auditor runs, offline, on the coordinator's reports.
//!
//! - `verify` checks the coordinator's certificate against the consortium CA, every report's
//!   signature, the hash chain, and (optionally) that a model file is the audited model.
//! - `metrics` computes the report's per-group metrics block from a CSV of the auditor's own
//!   predictions, with the same code the coordinator uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use medfed_audit::checkpoint::read_model_file;
use medfed_protocol::evaluation::DecisionThreshold;
use medfed_protocol::fairness::{AuditConfig, FairnessReport, group_predictions_at};
use medfed_protocol::report::{
    SignedReport, file_sha256, verify_chain, verify_checkpoint, verify_model,
};
use medfed_protocol::schema::{INTERSECTION_GROUP_SEPARATOR, intersection_name};

/// Verify medfed audit reports, or recompute their metrics on your own data.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks the certificate, every signature, the chain and optionally a model file.
    Verify {
        /// A report file, or the folder of the whole chain (its `round-*.json` files).
        #[arg(long)]
        reports: PathBuf,
        /// The coordinator's certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// The consortium CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// A model checkpoint (safetensors) to check against the report of its round.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Prints the per-group metrics block (JSON) for a CSV of labels, scores and groups, computed
    /// by the same code as the coordinator's audit.
    Metrics {
        /// The CSV file.
        #[arg(long)]
        csv: PathBuf,
        /// Column of the 0/1 labels.
        #[arg(long)]
        label: String,
        /// Column of the predicted probabilities.
        #[arg(long)]
        score: String,
        /// Column(s) of the sensitive attributes (one report each).
        #[arg(long, required_unless_present = "intersection")]
        group: Vec<String>,
        /// Two columns `A,B` audited together, as the schema's `intersections` are: one report
        /// named `A×B` whose groups are the pairs `a, b` of their values.
        #[arg(long, value_name = "A,B")]
        intersection: Vec<String>,
        /// Groups with fewer examples are suppressed.
        #[arg(long, default_value_t = 10)]
        min_count: u64,
        /// Decision threshold on the score, strictly between 0 and 1 (the task manifest's
        /// `decision_threshold`; 0.5 unless the consortium set another).
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medfed-audit: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Verify {
            reports,
            cert,
            ca,
            model,
        } => verify(&reports, &cert, &ca, model.as_deref()),
        Command::Metrics {
            csv,
            label,
            score,
            group,
            intersection,
            min_count,
            threshold,
        } => metrics(
            &csv,
            &label,
            &score,
            &group,
            &intersection,
            min_count,
            threshold,
        ),
    }
}

fn verify(
    reports: &Path,
    cert: &Path,
    ca: &Path,
    model: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let key = medfed_certs::coordinator_report_key(cert, ca).context("coordinator certificate")?;
    println!(
        "certificate: {} was issued by the consortium CA and signs with Ed25519",
        cert.display()
    );
    let paths = report_files(reports)?;
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .collect::<Result<_, _>>()?;
    let summary = if files.len() == 1 && !reports.is_dir() {
        let signed =
            SignedReport::from_json(&files[0]).with_context(|| reports.display().to_string())?;
        medfed_protocol::report::verify_signature(&signed, &key)
            .with_context(|| reports.display().to_string())?;
        println!(
            "report {}: signature valid (a single file: the chain is not checked)",
            reports.display()
        );
        None
    } else {
        let summary = verify_chain(&files, &key).map_err(|e| {
            let which = chain_error_index(&e)
                .and_then(|i| paths.get(i))
                .map(|p| p.display().to_string());
            anyhow::anyhow!(
                "{e}{}",
                which.map(|w| format!(" (file {w})")).unwrap_or_default()
            )
        })?;
        println!(
            "chain: {} reports, rounds {}..={}, every signature valid, every link intact",
            summary.reports, summary.first_round, summary.last_round
        );
        Some(summary)
    };
    if let Some(model) = model {
        let bytes =
            std::fs::read(model).with_context(|| format!("cannot read {}", model.display()))?;
        let file = read_model_file(model)
            .map_err(|e| anyhow::anyhow!("model file {} is damaged: {e}", model.display()))?;
        let round = file.round;
        let (report_bytes, signed) = files
            .iter()
            .filter_map(|f| Some((f, SignedReport::from_json(f).ok()?)))
            .find(|(_, s)| s.report.round == round)
            .with_context(|| format!("no report covers round {round} of {}", model.display()))?;
        verify_model(&signed.report, &file.model.hash().to_hex()).context("model file")?;
        match &file.audit {
            // The released model: a copy of the round's checkpoint that names its report.
            Some(link) => {
                anyhow::ensure!(
                    link.report_sha256 == file_sha256(report_bytes),
                    "model file {} names report {}, but the report of round {round} hashes to {}",
                    model.display(),
                    link.report_sha256,
                    file_sha256(report_bytes)
                );
                anyhow::ensure!(
                    link.approved == signed.report.approved,
                    "model file {} states a verdict its report of round {round} does not give",
                    model.display()
                );
            }
            None => verify_checkpoint(&signed.report, &bytes).context("model file")?,
        }
        println!(
            "model: {} is the model audited for round {round}",
            model.display()
        );
    }
    if let Some(summary) = summary {
        println!(
            "verdict of the last report (round {}): {}",
            summary.last_round,
            if summary.last_approved {
                "APPROVED"
            } else {
                "NOT APPROVED"
            }
        );
    }
    println!("OK");
    Ok(ExitCode::SUCCESS)
}

/// The report files: the file itself, or a folder's `round-*.json` in order.
fn report_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("round-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no round-*.json reports in {}", path.display());
    }
    Ok(files)
}

/// The index of the report a chain error is about, when it names one.
fn chain_error_index(error: &medfed_protocol::report::ReportError) -> Option<usize> {
    let text = format!("{error:?}");
    let start = text.find("index: ")? + "index: ".len();
    text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn metrics(
    csv: &Path,
    label: &str,
    score: &str,
    groups: &[String],
    intersections: &[String],
    min_count: u64,
    threshold: f64,
) -> anyhow::Result<ExitCode> {
    let threshold = DecisionThreshold::new(threshold).context("--threshold")?;
    let mut reader =
        csv::Reader::from_path(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no column {name}", csv.display()))
    };
    let (label_at, score_at) = (column(label)?, column(score)?);
    let group_at: Vec<usize> = groups.iter().map(|g| column(g)).collect::<Result<_, _>>()?;
    let mut pairs = Vec::with_capacity(intersections.len());
    for pair in intersections {
        let Some((a, b)) = pair.split_once(',').filter(|(a, b)| a != b) else {
            bail!("--intersection takes two different columns, as A,B, not {pair:?}");
        };
        pairs.push((intersection_name(a, b), column(a)?, column(b)?));
    }
    let (mut labels, mut scores, mut values) =
        (Vec::new(), Vec::new(), vec![Vec::new(); groups.len()]);
    let mut pair_values = vec![Vec::new(); pairs.len()];
    for (i, record) in reader.records().enumerate() {
        let row = i + 2;
        let record = record.with_context(|| format!("{} row {row}", csv.display()))?;
        let number = |at: usize, name: &str| -> anyhow::Result<f32> {
            record
                .get(at)
                .and_then(|v| v.trim().parse::<f32>().ok())
                .filter(|v| v.is_finite())
                .with_context(|| format!("{} row {row} column {name}: not a number", csv.display()))
        };
        labels.push(number(label_at, label)?);
        scores.push(number(score_at, score)?);
        for (g, &at) in group_at.iter().enumerate() {
            values[g].push(record.get(at).unwrap_or_default().to_owned());
        }
        for ((_, a, b), values) in pairs.iter().zip(&mut pair_values) {
            values.push(format!(
                "{}{INTERSECTION_GROUP_SEPARATOR}{}",
                record.get(*a).unwrap_or_default(),
                record.get(*b).unwrap_or_default()
            ));
        }
    }
    let mut config = AuditConfig::default();
    config.min_count(min_count);
    let mut out = BTreeMap::new();
    let named = groups
        .iter()
        .zip(&values)
        .chain(pairs.iter().map(|(name, _, _)| name).zip(&pair_values));
    for (name, values) in named {
        let counts = group_predictions_at(&scores, &labels, values, threshold);
        let report = FairnessReport::compute(&counts, &config)?;
        out.insert(name.clone(), report);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
