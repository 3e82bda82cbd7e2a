//! `medfed-audit`: what an auditor runs, offline, on the coordinator's reports.
//!
//! - `verify` checks the coordinator's certificate against the consortium CA, every report's
//!   signature, the hash chain, and (optionally) that a model file is the audited model and
//!   that the model card's figures are its report's.
//! - `metrics` computes the report's per-group metrics block from a CSV of the auditor's own
//!   predictions, with the same code the coordinator uses, in the schema's order of attributes
//!   and groups (or, without a schema, in the order given and in natural order), and with a
//!   policy file gives the policy's verdict as the coordinator would.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use medfed_audit::bias::{AttributeAudit, FairnessSettings};
use medfed_audit::checkpoint::read_model_file;
use medfed_audit::model_card::{CardSignature, ModelCard, check_against_chain};
use medfed_protocol::evaluation::DecisionThreshold;
use medfed_protocol::fairness::{
    AuditConfig, FairnessPolicy, FairnessReport, GroupCounts, group_predictions_at,
};
use medfed_protocol::report::{
    SignedReport, file_sha256, verify_chain, verify_checkpoint, verify_model,
};
use medfed_protocol::schema::{INTERSECTION_GROUP_SEPARATOR, Schema, intersection_name};
use serde::Serialize;

/// The auditors' tool: verify a medfed consortium's signed audit reports offline, or recompute
/// their per-group fairness metrics from your own predictions.
#[derive(Debug, Parser)]
#[command(name = "medfed-audit", version)]
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
        /// The model card (`model_card.json`) to check against the chain: the report it names
        /// judged the model it names, and the figures it copies are that report's (and, with
        /// --model, that it describes that model file).
        #[arg(long)]
        card: Option<PathBuf>,
    },
    /// Prints the per-group metrics (JSON) for a CSV of labels, scores and sensitive
    /// attributes, computed by the same code as the coordinator's audit; with --policy, the
    /// policy's verdict too.
    ///
    /// Attributes come in the order given (--group, then --intersection), or with --schema in
    /// the schema's order (its sensitive attributes, then its intersections); groups in the
    /// schema's level and band order, or without a schema in natural order (numbers by value).
    /// Without --policy the output is an object mapping each attribute to its report; with it,
    /// the `fairness` list and `approved` flag of a signed audit report, and the verdict on
    /// stderr.
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
        /// Column(s) of the sensitive attributes (one report each), audited by their raw
        /// values.
        #[arg(long, required_unless_present_any = ["intersection", "schema"])]
        group: Vec<String>,
        /// Two columns `A,B` audited together, as the schema's `intersections` are: one report
        /// named `A×B` whose groups are the pairs `a, b` of their values.
        #[arg(long, value_name = "A,B")]
        intersection: Vec<String>,
        /// The consortium's schema (TOML): audit its sensitive attributes and intersections,
        /// read from the columns of those names, grouped by its levels and bands, exactly as
        /// the coordinator groups them.
        #[arg(long, conflicts_with_all = ["group", "intersection"])]
        schema: Option<PathBuf>,
        /// Groups with fewer examples, positives or negatives are suppressed [default: the
        /// policy file's `[fairness] min_count`, else 10].
        #[arg(long)]
        min_count: Option<u64>,
        /// Decision threshold on the score, strictly between 0 and 1 (the task manifest's
        /// `decision_threshold`; 0.5 unless the consortium set another).
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
        /// A policy file, checked as the coordinator checks it: a `[fairness.policy]` table
        /// (the coordinator's configuration file will do) or the policy's keys alone, such as
        /// `max_equalized_odds_difference = 0.1`.
        #[arg(long)]
        policy: Option<PathBuf>,
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
            card,
        } => verify(&reports, &cert, &ca, model.as_deref(), card.as_deref()),
        Command::Metrics {
            csv,
            label,
            score,
            group,
            intersection,
            schema,
            min_count,
            threshold,
            policy,
        } => {
            let attributes = match schema {
                Some(path) => Attributes::Schema(read_schema(&path)?),
                None => Attributes::Columns {
                    groups: group,
                    intersections: intersection,
                },
            };
            let settings = policy.as_deref().map(read_policy).transpose()?;
            let min_count = min_count
                .or_else(|| settings.as_ref().and_then(|s| s.min_count))
                .unwrap_or(medfed_protocol::fairness::DEFAULT_MIN_COUNT);
            metrics(
                &csv,
                &label,
                &score,
                &attributes,
                min_count,
                threshold,
                settings.map(|s| s.policy).as_ref(),
            )
        }
    }
}

fn verify(
    reports: &Path,
    cert: &Path,
    ca: &Path,
    model: Option<&Path>,
    card: Option<&Path>,
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
    let mut checked = "every signature and link of the chain";
    let mut last = None;
    let summary = if files.len() == 1 && !reports.is_dir() {
        let signed =
            SignedReport::from_json(&files[0]).with_context(|| reports.display().to_string())?;
        medfed_protocol::report::verify_signature(&signed, &key)
            .with_context(|| reports.display().to_string())?;
        println!(
            "report {}: signature valid (a single file: the chain is not checked)",
            reports.display()
        );
        checked = "the report's signature; the chain was not checked";
        last = Some((signed.report.round, signed.report.verdict()));
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
        checked = if summary.is_some() {
            "every signature and link of the chain, and the model file"
        } else {
            "the report's signature and the model file; the chain was not checked"
        };
    }
    if let Some(card) = card {
        anyhow::ensure!(
            summary.is_some(),
            "--card needs the whole chain: give --reports the reports folder"
        );
        verify_card(card, &files, model, &key)?;
    }
    if let Some(summary) = summary {
        last = Some((summary.last_round, summary.last_verdict));
    }
    // One closing line that keeps apart what was verified (the files are the coordinator's and
    // intact) from what they say (the consortium's fairness policy's verdict): intact files
    // can carry a model that failed its audit.
    if let Some((round, verdict)) = last {
        println!(
            "files intact ({checked}{}) | policy verdict, round {round}: {verdict}",
            if card.is_some() {
                ", and the model card"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks a model card against the verified chain (`files`, in order) and, when given, the
/// model file it should describe.
fn verify_card(
    card: &Path,
    files: &[Vec<u8>],
    model: Option<&Path>,
    key: &[u8; 32],
) -> anyhow::Result<()> {
    let bytes = std::fs::read(card).with_context(|| format!("cannot read {}", card.display()))?;
    let parsed = ModelCard::from_json(&bytes).with_context(|| card.display().to_string())?;
    let chain: Vec<(SignedReport, String)> = files
        .iter()
        .map(|f| Ok((SignedReport::from_json(f)?, file_sha256(f))))
        .collect::<Result<_, medfed_protocol::report::ReportError>>()?;
    let round = check_against_chain(
        &parsed,
        chain.iter().map(|(s, sha)| (&s.report, sha.as_str())),
    )
    .with_context(|| card.display().to_string())?;
    if let Some(model) = model {
        let model_bytes =
            std::fs::read(model).with_context(|| format!("cannot read {}", model.display()))?;
        anyhow::ensure!(
            parsed.released_model.model_file_sha256 == file_sha256(&model_bytes),
            "model card {} describes another model file than {}",
            card.display(),
            model.display()
        );
    }
    // The signature file beside the card: `<card file name>.sig`.
    let mut signature_path = card.as_os_str().to_owned();
    signature_path.push(".sig");
    let signature_path = PathBuf::from(signature_path);
    let signature = std::fs::read(&signature_path).with_context(|| {
        format!(
            "cannot read the card's signature {}",
            signature_path.display()
        )
    })?;
    CardSignature::from_json(&signature)
        .and_then(|s| s.verify(&bytes, key))
        .with_context(|| card.display().to_string())?;
    println!(
        "model card: {} describes the released model of round {round}; its model, checkpoint, \
         evaluation, fairness verdict and privacy figures are the chain's, and it is signed by \
         the coordinator's report key",
        card.display()
    );
    Ok(())
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

/// What `metrics` audits: raw columns as named, or the schema's attributes.
enum Attributes {
    /// `--group` columns, then `--intersection` pairs `A,B`, by their raw values.
    Columns {
        groups: Vec<String>,
        intersections: Vec<String>,
    },
    /// The schema's sensitive attributes and intersections, with its levels and bands.
    Schema(Schema),
}

/// One audited attribute: its name, how a row's group is read, each row's group (`None`:
/// outside every group), and the order of its groups when it is known in advance (the
/// schema's).
struct Audited {
    name: String,
    of: GroupOf,
    rows: Vec<Option<String>>,
    order: Option<Vec<String>>,
}

/// How a row's group of one attribute is read from its cells.
#[derive(Clone, Copy)]
enum GroupOf {
    /// The raw value of the column at this header index.
    Column(usize),
    /// The raw values of two columns, joined as an intersection's group names are.
    Pair(usize, usize),
    /// The schema's group, from the row's sensitive cells (bands and levels applied).
    Schema,
}

impl Audited {
    fn new(name: String, of: GroupOf) -> Self {
        Self {
            name,
            of,
            rows: Vec::new(),
            order: None,
        }
    }
}

fn read_schema(path: &Path) -> anyhow::Result<Schema> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Schema::parse(&text).with_context(|| path.display().to_string())
}

/// Reads a policy file: a `[fairness]` table with its `policy` (and perhaps `min_count`), as in
/// the coordinator's configuration, or the policy's keys alone.
fn read_policy(path: &Path) -> anyhow::Result<FairnessSettings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let settings = match table.remove("fairness") {
        Some(fairness) => {
            let settings: FairnessSettings = fairness
                .try_into()
                .with_context(|| format!("{}: [fairness]", path.display()))?;
            if settings.policy == FairnessPolicy::default() {
                bail!(
                    "{}: [fairness] sets no [fairness.policy] limit",
                    path.display()
                );
            }
            settings
        }
        None => FairnessSettings {
            min_count: None,
            policy: toml::Value::Table(table)
                .try_into()
                .with_context(|| format!("{}: not a fairness policy", path.display()))?,
        },
    };
    Ok(settings)
}

fn metrics(
    csv: &Path,
    label: &str,
    score: &str,
    attributes: &Attributes,
    min_count: u64,
    threshold: f64,
    policy: Option<&FairnessPolicy>,
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
    let mut audited = Vec::new();
    // With a schema: the header index of each sensitive attribute, and the audit groups.
    let mut sensitive_at = Vec::new();
    let mut schema_groups = Vec::new();
    match attributes {
        Attributes::Columns {
            groups,
            intersections,
        } => {
            for name in groups {
                audited.push(Audited::new(name.clone(), GroupOf::Column(column(name)?)));
            }
            for pair in intersections {
                let Some((a, b)) = pair.split_once(',').filter(|(a, b)| a != b) else {
                    bail!("--intersection takes two different columns, as A,B, not {pair:?}");
                };
                let of = GroupOf::Pair(column(a)?, column(b)?);
                audited.push(Audited::new(intersection_name(a, b), of));
            }
        }
        Attributes::Schema(schema) => {
            for name in schema.sensitive() {
                sensitive_at.push(column(name)?);
            }
            schema_groups = schema.audit_groups();
            for name in schema.audit_attributes() {
                let order = schema_groups
                    .iter()
                    .filter(|g| g.attribute == name)
                    .map(|g| g.group.clone())
                    .collect();
                let mut attribute = Audited::new(name, GroupOf::Schema);
                attribute.order = Some(order);
                audited.push(attribute);
            }
        }
    }
    let (mut labels, mut scores) = (Vec::new(), Vec::new());
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
        let cell = |at: usize| record.get(at).unwrap_or_default();
        // The row's schema groups, one per audited attribute at most.
        let in_schema: Vec<usize> = match attributes {
            Attributes::Schema(schema) => {
                let cells: Vec<&str> = sensitive_at.iter().map(|&at| cell(at)).collect();
                schema.audit_groups_of(&cells)
            }
            Attributes::Columns { .. } => Vec::new(),
        };
        for attribute in &mut audited {
            let group = match attribute.of {
                GroupOf::Column(at) => Some(cell(at).to_owned()),
                GroupOf::Pair(a, b) => Some(format!(
                    "{}{INTERSECTION_GROUP_SEPARATOR}{}",
                    cell(a),
                    cell(b)
                )),
                GroupOf::Schema => in_schema
                    .iter()
                    .map(|&g| &schema_groups[g])
                    .find(|g| g.attribute == attribute.name)
                    .map(|g| g.group.clone()),
            };
            attribute.rows.push(group);
        }
    }
    let mut config = AuditConfig::default();
    config
        .min_count(min_count)
        .decision_threshold(threshold.get() as f32);
    let mut reports = Vec::with_capacity(audited.len());
    for attribute in &audited {
        let report = audit_attribute(attribute, &scores, &labels, threshold, &config)
            .with_context(|| format!("attribute {}", attribute.name))?;
        reports.push((attribute.name.clone(), report));
    }
    match policy {
        None => println!("{}", serde_json::to_string_pretty(&InOrder(&reports))?),
        Some(policy) => {
            let fairness: Vec<AttributeAudit> = reports
                .into_iter()
                .map(|(attribute, report)| AttributeAudit {
                    policy: policy.check(&report),
                    attribute,
                    report,
                })
                .collect();
            let approved = fairness.iter().all(|a| a.policy.approved);
            println!(
                "{}",
                serde_json::to_string_pretty(&PolicyOutput {
                    fairness: &fairness,
                    approved,
                })?
            );
            eprintln!("{}", verdict_text(&fairness, approved));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The report of one attribute: its rows' counts in its groups' order (the schema's, every
/// group listed even without rows; else natural order).
fn audit_attribute(
    attribute: &Audited,
    scores: &[f32],
    labels: &[f32],
    threshold: DecisionThreshold,
    config: &AuditConfig,
) -> anyhow::Result<FairnessReport> {
    let (mut kept_scores, mut kept_labels, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    for ((score, label), group) in scores.iter().zip(labels).zip(&attribute.rows) {
        if let Some(group) = group {
            kept_scores.push(*score);
            kept_labels.push(*label);
            groups.push(group.as_str());
        }
    }
    let mut counts = group_predictions_at(&kept_scores, &kept_labels, &groups, threshold);
    let order: Vec<String> = match &attribute.order {
        Some(order) => order.clone(),
        None => {
            let mut names: Vec<String> = counts.keys().cloned().collect();
            names.sort_by(|a, b| natural_order(a, b));
            names
        }
    };
    let ordered: Vec<(String, GroupCounts)> = order
        .into_iter()
        .map(|name| {
            let counts = counts.remove(&name).unwrap_or_else(GroupCounts::zero);
            (name, counts)
        })
        .collect();
    Ok(FairnessReport::compute(
        ordered.iter().map(|(name, counts)| (name, counts)),
        config,
    )?)
}

/// Compares group names as people sort them: runs of digits by their value (`2` before `10`),
/// everything else character by character; ties by bytes, so the order is total.
fn natural_order(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.chars().next(), y.chars().next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let (m, rest_x) = split_digits(x);
                let (n, rest_y) = split_digits(y);
                let (m, n) = (m.trim_start_matches('0'), n.trim_start_matches('0'));
                let by_value = m.len().cmp(&n.len()).then_with(|| m.cmp(n));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (x, y) = (rest_x, rest_y);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(&d);
                }
                (x, y) = (&x[c.len_utf8()..], &y[d.len_utf8()..]);
            }
        }
    }
}

/// The leading run of ASCII digits of `s`, and the rest.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Attribute reports as one JSON object, in their order (not sorted by name).
struct InOrder<'a>(&'a [(String, FairnessReport)]);

impl Serialize for InOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, report)| (name, report)))
    }
}

/// With `--policy`: the fairness part of a signed audit report.
#[derive(Serialize)]
struct PolicyOutput<'a> {
    fairness: &'a [AttributeAudit],
    approved: bool,
}

/// The verdict for people: APPROVED or NOT APPROVED, then each failing check, with the reason
/// of an undefined value.
fn verdict_text(fairness: &[AttributeAudit], approved: bool) -> String {
    let mut text = format!(
        "verdict: {}",
        if approved { "APPROVED" } else { "NOT APPROVED" }
    );
    for audit in fairness {
        for check in audit.policy.checks.iter().filter(|c| !c.passed) {
            let value = match (check.value, &check.undefined) {
                (Some(v), _) => format!("{v:.3}"),
                (None, Some(reason)) => format!("undefined, because {reason}"),
                (None, None) => "undefined".to_owned(),
            };
            let relation = check.limit().map_or("?", |l| l.bound().symbol());
            text.push_str(&format!(
                "\n  FAIL {}: {}: {value} (must be {relation} {})",
                audit.attribute, check.name, check.threshold
            ));
        }
    }
    text
}
