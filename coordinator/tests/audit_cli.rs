//! `medfed-audit verify` on a chain written by the coordinator's report writer: an untouched
//! chain verifies; one flipped byte in any report or in the model file fails, saying which.

use std::path::{Path, PathBuf};
use std::process::Command;

use medfed_certs::{load_report_signing_key, make_dev_consortium};
use medfed_coordinator::checkpoint::write_checkpoint;
use medfed_coordinator::reports::ReportWriter;
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
