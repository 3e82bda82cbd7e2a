//! `medfed-audit verify` on a chain written by the coordinator's report writer: an untouched
//! chain verifies; one flipped byte in any report or in the model file fails, saying which.

use std::path::{Path, PathBuf};
use std::process::Command;

use medfed_audit::checkpoint::write_checkpoint;
use medfed_audit::reports::ReportWriter;
use medfed_certs::{load_report_signing_key, make_dev_consortium};
use medfed_protocol::model::{Model, ModelKind, ModelSpec};
use medfed_protocol::report::{AuditReport, REPORT_FORMAT, file_sha256};

/// A consortium, three model checkpoints and the chain of their three reports.
fn chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf, Vec<PathBuf>) {
    let certs = make_dev_consortium(&dir.join("certs"), &["hospital-1".into()]).unwrap();
    let key = load_report_signing_key(&certs.coordinator.key).unwrap();
    let reports = dir.join("reports");
    let mut writer = ReportWriter::open(&reports, key).unwrap();
    let spec = ModelSpec {
        kind: ModelKind::Mlp { hidden: vec![4] },
        input_dim: 3,
    };
    let mut checkpoints = Vec::new();
    std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
    for round in 0..3u64 {
        let model = Model::new(spec.clone(), spec.initial_parameters(round)).unwrap();
        let checkpoint = write_checkpoint(&dir.join("checkpoints"), round, &model).unwrap();
        let report = AuditReport {
            format: REPORT_FORMAT.into(),
            round,
            created_at_ms: 1_700_000_000_000 + round as i64,
            model_sha256: model.hash().to_hex(),
            checkpoint_sha256: Some(file_sha256(&std::fs::read(&checkpoint).unwrap())),
            participants: vec!["hospital-1".into()],
            absent_members: Vec::new(),
            privacy: Vec::new(),
            evaluation: None,
            not_evaluated: None,
            fairness: Vec::new(),
            approved: true,
            site_evaluations: Vec::new(),
            previous_report_sha256: None,
        };
        writer
            .append(report)
            .unwrap()
            .expect("a new round is written");
        checkpoints.push(checkpoint);
    }
    (
        reports,
        certs.coordinator.cert.clone(),
        certs.ca_cert.clone(),
        checkpoints,
    )
}

fn verify(reports: &Path, cert: &Path, ca: &Path, model: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_medfed-audit"));
    command
        .arg("verify")
        .arg("--reports")
        .arg(reports)
        .arg("--cert")
        .arg(cert)
        .arg("--ca")
        .arg(ca);
    if let Some(model) = model {
        command.arg("--model").arg(model);
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_untouched_chain_and_model_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (reports, cert, ca, checkpoints) = chain(dir.path());
    let (ok, text) = verify(&reports, &cert, &ca, Some(&checkpoints[2]));
    assert!(ok, "{text}");
    assert!(text.contains("3 reports"), "{text}");
    // The last line keeps what was verified apart from the policy's verdict.
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("files intact (every signature and link of the chain, and the model file) | policy verdict, round 2: APPROVED"),
        "{text}"
    );
}

#[test]
fn a_flipped_byte_in_a_report_fails_naming_it() {
    for (file, at) in [
        ("round-00001.json", 100),
        ("round-00000.json", 40),
        ("round-00002.json", 300),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (reports, cert, ca, _) = chain(dir.path());
        flip(&reports.join(file), at);
        let (ok, text) = verify(&reports, &cert, &ca, None);
        assert!(!ok, "flipping {file} went unnoticed: {text}");
        assert!(text.contains(file), "the failure must name {file}: {text}");
    }
}

#[test]
fn a_flipped_byte_in_the_model_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (reports, cert, ca, checkpoints) = chain(dir.path());
    let len = std::fs::metadata(&checkpoints[1]).unwrap().len() as usize;
    flip(&checkpoints[1], len - 3);
    let (ok, text) = verify(&reports, &cert, &ca, Some(&checkpoints[1]));
    assert!(!ok, "{text}");
    assert!(text.contains("model file"), "{text}");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (reports, cert, _, _) = chain(dir.path());
    let other = make_dev_consortium(&dir.path().join("other"), &["h".into()]).unwrap();
    let (ok, text) = verify(&reports, &cert, &other.ca_cert, None);
    assert!(
        !ok && text.contains("not issued by the consortium CA"),
        "{text}"
    );
}

/// `medfed-audit metrics` on the committed fairlearn fixture's rows gives fairlearn's figures.
#[test]
fn metrics_on_the_fairlearn_fixture_equal_fairlearn() {
    use medfed_protocol::fairness::{FairnessReport, GroupReport};
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../../protocol/tests/vectors/fairlearn_metrics.json"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("predictions.csv");
    let mut text = String::from("label,score,group,sex\n");
    for row in fixture["rows"].as_array().unwrap() {
        let row = row.as_array().unwrap();
        text.push_str(&format!(
            "{},{},{},{}\n",
            row[0],
            row[1],
            row[2].as_str().unwrap(),
            row[3].as_str().unwrap()
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_medfed-audit"))
        .args([
            "metrics",
            "--label",
            "label",
            "--score",
            "score",
            "--group",
            "group",
            "--group",
            "sex",
            "--min-count",
            "0",
        ])
        .arg("--csv")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: std::collections::BTreeMap<String, FairnessReport> =
        serde_json::from_slice(&output.stdout).unwrap();
    let close = |a: f64, b: &serde_json::Value| (a - b.as_f64().unwrap()).abs() < 1e-9;
    for (attribute, expected) in fixture["attributes"].as_object().unwrap() {
        let report = &reports[attribute];
        for group in &report.groups {
            let GroupReport::Reported { group, metrics } = group else {
                panic!("min_count 0 reports all")
            };
            let want = &expected["by_group"][group.as_str()];
            assert!(
                close(metrics.selection_rate.value, &want["selection_rate"]),
                "{attribute}/{group}"
            );
            assert!(
                close(
                    metrics.tpr.as_ref().unwrap().value,
                    &want["true_positive_rate"]
                ),
                "{attribute}/{group}"
            );
            assert!(
                close(
                    metrics.fpr.as_ref().unwrap().value,
                    &want["false_positive_rate"]
                ),
                "{attribute}/{group}"
            );
            assert!(
                close(metrics.accuracy.value, &want["accuracy"]),
                "{attribute}/{group}"
            );
        }
        let d = report.disparities.as_ref().unwrap();
        assert!(close(
            d.demographic_parity_difference,
            &expected["demographic_parity_difference"]
        ));
        assert!(close(
            d.demographic_parity_ratio.unwrap(),
            &expected["demographic_parity_ratio"]
        ));
        assert!(close(
            d.equalized_odds_difference.unwrap(),
            &expected["equalized_odds_difference"]
        ));
    }
}

#[test]
fn metrics_take_the_auditors_threshold() {
    use medfed_protocol::fairness::{FairnessReport, GroupReport};
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("p.csv");
    std::fs::write(
        &csv,
        "y,p,g\n1,0.6,a\n0,0.7,a\n1,0.95,a\n0,0.2,b\n1,0.8,b\n1,0.55,b\n",
    )
    .unwrap();
    let selection = |threshold: &str| -> Vec<f64> {
        let output = Command::new(env!("CARGO_BIN_EXE_medfed-audit"))
            .args([
                "metrics",
                "--label",
                "y",
                "--score",
                "p",
                "--group",
                "g",
                "--min-count",
                "0",
                "--threshold",
                threshold,
            ])
            .arg("--csv")
            .arg(&csv)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reports: std::collections::BTreeMap<String, FairnessReport> =
            serde_json::from_slice(&output.stdout).unwrap();
        reports["g"]
            .groups
            .iter()
            .map(|g| match g {
                GroupReport::Reported { metrics, .. } => metrics.selection_rate.value,
                GroupReport::Suppressed { .. } => panic!("min_count 0"),
            })
            .collect()
    };
    assert_eq!(selection("0.5"), vec![1.0, 2.0 / 3.0]);
    assert_eq!(selection("0.9"), vec![1.0 / 3.0, 0.0]);
    let bad = Command::new(env!("CARGO_BIN_EXE_medfed-audit"))
        .args([
            "metrics",
            "--label",
            "y",
            "--score",
            "p",
            "--group",
            "g",
            "--threshold",
            "2",
        ])
        .arg("--csv")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// `--intersection sex,age` audits the pairs of the two columns under `sex×age`, exactly as if
/// the auditor had joined the columns into one and passed it as `--group`.
#[test]
fn metrics_audit_an_intersection_as_the_joined_column() {
    use medfed_protocol::fairness::FairnessReport;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("p.csv");
    let mut text = String::from("y,p,sex,age,joined\n");
    for i in 0..60u32 {
        let (sex, age) = (
            ["F", "M"][(i % 2) as usize],
            ["<50", "≥50"][(i / 2 % 2) as usize],
        );
        let y = u32::from(i % 3 == 0 || (sex == "M" && i % 5 == 0));
        let p = f64::from((i * 37) % 100) / 100.0;
        text.push_str(&format!("{y},{p},{sex},{age},\"{sex}, {age}\"\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let run = |extra: &[&str]| -> std::collections::BTreeMap<String, FairnessReport> {
        let output = Command::new(env!("CARGO_BIN_EXE_medfed-audit"))
            .args([
                "metrics",
                "--label",
                "y",
                "--score",
                "p",
                "--min-count",
                "5",
            ])
            .args(extra)
            .arg("--csv")
            .arg(&csv)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let intersection = run(&["--group", "sex", "--intersection", "sex,age"]);
    let joined = run(&["--group", "joined"]);
    assert_eq!(
        intersection.keys().collect::<Vec<_>>(),
        ["sex", "sex×age"],
        "the single attribute and the intersection, under the schema's name"
    );
    assert_eq!(
        serde_json::to_value(&intersection["sex×age"]).unwrap(),
        serde_json::to_value(&joined["joined"]).unwrap()
    );
    assert_eq!(intersection["sex×age"].groups.len(), 4);
    let same_column = Command::new(env!("CARGO_BIN_EXE_medfed-audit"))
        .args(["metrics", "--label", "y", "--score", "p"])
        .args(["--intersection", "sex,sex"])
        .arg("--csv")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(!same_column.status.success());
    assert!(String::from_utf8_lossy(&same_column.stderr).contains("two different columns"));
}

/// Runs `medfed-audit` with `args`; returns whether it succeeded, its stdout and its stderr.
fn run_audit(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_medfed-audit"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The positions of `needles` in `text`, each after the previous one; panics naming the first
/// one missing from there on.
fn in_order(text: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        let at = text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing after byte {from}:\n{text}"));
        from += at + needle.len();
    }
}

#[test]
fn help_names_the_auditors_tool() {
    let (ok, help, _) = run_audit(&["--help"]);
    assert!(ok);
    assert!(help.contains("The auditors' tool"), "{help}");
    assert!(help.contains("Usage: medfed-audit"), "{help}");
    // Not the library crate's description.
    assert!(!help.contains("the checkpoint files they bind"), "{help}");
}

#[test]
fn a_chain_whose_last_round_had_no_evaluation_data_verifies_and_says_so() {
    use medfed_protocol::report::NotEvaluated;

    let dir = tempfile::tempdir().unwrap();
    let (reports, cert, ca, _) = chain(dir.path());
    let certs = dir.path().join("certs");
    let key = load_report_signing_key(&certs.join("coordinator.key")).unwrap();
    let mut writer = ReportWriter::open(&reports, key).unwrap();
    let report = AuditReport {
        format: REPORT_FORMAT.into(),
        round: 3,
        created_at_ms: 1_700_000_000_003,
        model_sha256: "ab".repeat(32),
        checkpoint_sha256: None,
        participants: vec!["hospital-1".into()],
        absent_members: Vec::new(),
        privacy: Vec::new(),
        evaluation: None,
        not_evaluated: Some(NotEvaluated::NoEvaluationData),
        fairness: Vec::new(),
        approved: false,
        site_evaluations: Vec::new(),
        previous_report_sha256: None,
    };
    writer.append(report).unwrap().expect("written");
    let (ok, text) = verify(&reports, &cert, &ca, None);
    assert!(ok, "{text}");
    assert!(
        text.contains("| policy verdict, round 3: NOT EVALUATED (no evaluation data"),
        "{text}"
    );
    let page = std::fs::read_to_string(reports.join("index.html")).unwrap();
    assert!(page.contains("NO EVALUATION DATA"));
}

/// Predictions of 40 patients in wards 2, 9 and 10 (listed out of order) and of both sexes.
fn ward_csv(dir: &Path) -> PathBuf {
    let csv = dir.join("wards.csv");
    let mut text = String::from("y,p,ward,sex,age\n");
    for i in 0..60u32 {
        let ward = ["10", "2", "9"][(i % 3) as usize];
        let sex = ["M", "F"][(i / 3 % 2) as usize];
        let age = 30 + (i * 7) % 50;
        let y = u32::from(i % 4 < 2);
        let p = f64::from((i * 37) % 100) / 100.0;
        text.push_str(&format!("{y},{p},{ward},{sex},{age}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    csv
}

#[test]
fn metrics_list_attributes_as_given_and_groups_in_natural_order() {
    let dir = tempfile::tempdir().unwrap();
    let csv = ward_csv(dir.path());
    let csv = csv.to_str().unwrap();
    let base = ["metrics", "--csv", csv, "--label", "y", "--score", "p"];
    let (ok, out, err) = run_audit(
        &[
            &base[..],
            &["--group", "ward", "--group", "sex", "--min-count", "1"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    // `ward` before `sex`, as given; wards by number, not by text ("10" < "2").
    in_order(
        &out,
        &[
            "\"ward\"",
            "\"group\": \"2\"",
            "\"group\": \"9\"",
            "\"group\": \"10\"",
            "\"sex\"",
            "\"group\": \"F\"",
            "\"group\": \"M\"",
        ],
    );
    // The same rows in another order give the same output.
    let text = std::fs::read_to_string(csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut shuffled = vec![lines[0]];
    shuffled.extend(lines[1..].iter().rev());
    let other = dir.path().join("reversed.csv");
    std::fs::write(&other, shuffled.join("\n") + "\n").unwrap();
    let (ok, again, _) = run_audit(&[
        "metrics",
        "--csv",
        other.to_str().unwrap(),
        "--label",
        "y",
        "--score",
        "p",
        "--group",
        "ward",
        "--group",
        "sex",
        "--min-count",
        "1",
    ]);
    assert!(ok);
    assert_eq!(again, out);
}

#[test]
fn metrics_with_the_schema_use_its_levels_bands_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let csv = ward_csv(dir.path());
    let schema = dir.path().join("schema.toml");
    std::fs::write(
        &schema,
        "sensitive = [\"sex\", \"age\"]\nintersections = [[\"sex\", \"age\"]]\n\
         [label]\ncolumn = \"y\"\npositive = [\"1\"]\nnegative = [\"0\"]\n\
         [[columns]]\nname = \"age\"\ntype = \"numeric\"\nrange = [0, 120]\n\
         [[columns]]\nname = \"sex\"\ntype = \"categorical\"\nlevels = [\"M\", \"F\", \"X\"]\n\
         [bands]\nage = [45, 55]\n",
    )
    .unwrap();
    let (ok, out, err) = run_audit(&[
        "metrics",
        "--csv",
        csv.to_str().unwrap(),
        "--label",
        "y",
        "--score",
        "p",
        "--schema",
        schema.to_str().unwrap(),
        "--min-count",
        "1",
    ]);
    assert!(ok, "{err}");
    // The schema's attributes, its level order (X has nobody and is listed, suppressed), its
    // bands from low to high (by text, "45-<55" would come first), then the intersection.
    in_order(
        &out,
        &[
            "\"sex\"",
            "\"group\": \"M\"",
            "\"group\": \"F\"",
            "\"status\": \"suppressed\",\n        \"group\": \"X\"",
            "\"age\"",
            "\"group\": \"<45\"",
            "\"group\": \"45-<55\"",
            "\"group\": \"≥55\"",
            "\"sex×age\"",
            "\"group\": \"M, <45\"",
            "\"group\": \"F, <45\"",
        ],
    );
    // Raw columns and the schema cannot both choose the attributes.
    let (ok, _, err) = run_audit(&[
        "metrics",
        "--csv",
        csv.to_str().unwrap(),
        "--label",
        "y",
        "--score",
        "p",
        "--schema",
        schema.to_str().unwrap(),
        "--group",
        "sex",
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

#[test]
fn metrics_apply_a_policy_file_and_print_the_verdict_with_its_reasons() {
    use medfed_protocol::fairness::UndefinedReason;
    use medfed_protocol::report::AttributeFairness;

    #[derive(serde::Deserialize)]
    struct Output {
        fairness: Vec<AttributeFairness>,
        approved: bool,
    }

    let dir = tempfile::tempdir().unwrap();
    let csv = ward_csv(dir.path());
    let csv = csv.to_str().unwrap();
    // The coordinator's own configuration file: its [fairness] table is read, the rest ignored.
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "listen = \"0.0.0.0:4433\"\n[fairness]\nmin_count = 5\n[fairness.policy]\n\
         min_demographic_parity_ratio = 0.8\nmax_equalized_odds_difference = 0.5\n",
    )
    .unwrap();
    let run = |policy: &Path, threshold: &str| {
        run_audit(&[
            "metrics",
            "--csv",
            csv,
            "--label",
            "y",
            "--score",
            "p",
            "--group",
            "sex",
            "--threshold",
            threshold,
            "--policy",
            policy.to_str().unwrap(),
        ])
    };
    let (ok, out, err) = run(&config, "0.5");
    assert!(ok, "{err}");
    let output: Output = serde_json::from_str(&out).unwrap();
    assert_eq!(output.fairness.len(), 1);
    let sex = &output.fairness[0];
    assert_eq!(sex.attribute, "sex");
    assert_eq!(sex.report.min_count, 5, "the file's min_count");
    assert_eq!(sex.policy.checks.len(), 2);
    assert_eq!(output.approved, sex.policy.approved);
    let verdict = if output.approved {
        "verdict: APPROVED"
    } else {
        "verdict: NOT APPROVED"
    };
    assert!(err.starts_with(verdict), "{err}");

    // Nobody scores 0.995 or more (the highest score is 0.99): nobody is flagged, the ratio is
    // undefined, and the verdict says why. A file with the policy's keys alone does as well.
    let bare = dir.path().join("policy.toml");
    std::fs::write(&bare, "min_demographic_parity_ratio = 0.8\n").unwrap();
    let (ok, out, err) = run(&bare, "0.995");
    assert!(ok, "{err}");
    let output: Output = serde_json::from_str(&out).unwrap();
    assert!(!output.approved);
    let check = &output.fairness[0].policy.checks[0];
    assert_eq!(
        check.undefined,
        Some(UndefinedReason::NobodyFlagged { threshold: 0.995 })
    );
    assert!(
        err.contains(
            "FAIL sex: min_demographic_parity_ratio: undefined, because nobody was flagged \
             positive in any group at threshold 0.995"
        ),
        "{err}"
    );

    // A file that is not a policy is refused, naming it.
    std::fs::write(&bare, "min_parity = 0.8\n").unwrap();
    let (ok, _, err) = run(&bare, "0.5");
    assert!(!ok && err.contains("policy.toml"), "{err}");
}
