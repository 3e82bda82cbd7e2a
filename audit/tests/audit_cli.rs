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
            fairness: Vec::new(),
            approved: true,
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
    assert!(text.contains("3 reports") && text.contains("OK"), "{text}");
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
