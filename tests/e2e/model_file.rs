//! Issue 14: the model in the hospital's hands. The released model file carries everything
//! needed to score a patient, and `medfed-node predict` (the real binary) scores each
//! hospital's held-out patients exactly as the consortium's evaluation did.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use medfed_audit::checkpoint::{encode_model_file, read_model_file};
use medfed_audit::model_card::{MODEL_CARD_HTML, MODEL_CARD_JSON, MODEL_CARD_SIGNATURE, ModelCard};
use medfed_coordinator::config::ReleaseRule;
use medfed_coordinator::training::{RELEASED_MODEL_FILE, TrainingReport};
use medfed_e2e::process::{Process, node_toml, workspace_binary};
use medfed_e2e::{Consortium, dp_sgd_policy, subscribe};
use medfed_node::config::NodeConfig;
use medfed_protocol::evaluation::{DecisionThreshold, EVAL_SCORE_BINS, EvalCounts, EvalMetrics};
use medfed_protocol::report::{SignedReport, file_sha256};

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
const STEP: Duration = Duration::from_secs(120);

/// Runs the workspace binary `binary` of package `package` with `args`, and returns whether it
/// succeeded and its output.
pub(crate) async fn run(package: &str, binary: &str, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let mut command = Command::new(workspace_binary(package, binary).unwrap());
    command.args(args);
    let mut process = Process::spawn(binary, command).unwrap();
    let status = process.wait(STEP).await.unwrap();
    (status.success(), process.output().join("\n"))
}

/// Runs `medfed-node` with `args` and returns its output, failing the test unless it succeeds.
pub(crate) async fn medfed_node(args: &[&std::ffi::OsStr]) -> String {
    let (success, output) = run("medfed-node", "medfed-node", args).await;
    assert!(success, "medfed-node {args:?} failed:\n{output}");
    output
}

/// The (score, label) pairs of a scores file written by `predict` from labelled rows.
pub(crate) fn scores_and_labels(path: &Path) -> (Vec<f32>, Vec<f32>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (score, label) = (column("score"), column("label"));
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.unwrap();
        scores.push(record[score].parse::<f32>().unwrap());
        labels.push(record[label].parse::<f32>().unwrap());
    }
    (scores, labels)
}

/// `medfed-node predict --held-out` of the node configured in `toml` with the model file
/// `model`, into `out`; every held-out row must be scored.
pub(crate) async fn predict_held_out(model: &Path, toml: &Path, out: &Path) {
    let output = medfed_node(&[
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--config".as_ref(),
        toml.as_os_str(),
        "--held-out".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .await;
    assert!(output.contains("0 rows not scored"), "{output}");
}

/// Adds the evaluation counts of one hospital's scores to `pooled` (empty at first), as the
/// hospital's node adds them to the secure sum.
pub(crate) fn pool(
    pooled: &mut Vec<f64>,
    scores: &[f32],
    labels: &[f32],
    threshold: DecisionThreshold,
) {
    let mut vector = Vec::new();
    EvalCounts::from_predictions_at(scores, labels, EVAL_SCORE_BINS, threshold)
        .write_vector(&mut vector);
    if pooled.is_empty() {
        *pooled = vector;
    } else {
        pooled.iter_mut().zip(&vector).for_each(|(a, b)| *a += b);
    }
}

/// Asserts that the pooled counts give the coordinator's figures, to 1e-6.
pub(crate) fn assert_reproduces(pooled: &[f64], coordinator: &EvalMetrics) {
    let pooled = EvalCounts::from_vector(pooled)
        .and_then(|c| c.metrics())
        .unwrap();
    assert_eq!(pooled.examples, coordinator.examples);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6;
    assert!(
        close(pooled.auc.unwrap(), coordinator.auc.unwrap())
            && close(pooled.accuracy, coordinator.accuracy)
            && close(pooled.loss, coordinator.loss),
        "predict's pooled figures {pooled:?} differ from the coordinator's {coordinator:?}"
    );
}

/// Scores every hospital's held-out rows with the released model through `medfed-node predict
/// --held-out` (the real binary), pools them as the secure sum does, and asserts the pooled
/// figures are the coordinator's final evaluation (to 1e-6). Returns each hospital's held-out
/// row count.
pub(crate) async fn assert_predict_reproduces(
    consortium: &Consortium,
    nodes: &[NodeConfig],
    report: &TrainingReport,
    threshold: DecisionThreshold,
) -> Vec<usize> {
    let (released, _) = report.released.clone().expect("a released model");
    let mut pooled = Vec::new();
    let mut held_out = Vec::new();
    for node in nodes {
        let name = node.state_dir.file_name().unwrap().to_string_lossy();
        let toml = consortium.dir.path().join(format!("{name}.toml"));
        std::fs::write(&toml, node_toml(node)).unwrap();
        let scores = consortium.dir.path().join(format!("{name}-scores.csv"));
        predict_held_out(&released, &toml, &scores).await;
        let (scores, labels) = scores_and_labels(&scores);
        held_out.push(scores.len());
        pool(&mut pooled, &scores, &labels, threshold);
    }
    let final_evaluation = report.final_evaluation.as_ref().expect("final evaluation");
    assert_reproduces(&pooled, final_evaluation);
    held_out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predict_on_each_hospitals_held_out_rows_reproduces_the_pooled_final_evaluation() {
    subscribe();
    let consortium = Consortium::new(&NODES, 200);
    let threshold = DecisionThreshold::new(0.4).unwrap();
    let mut config = consortium.coordinator_config(3, 3);
    config.task.decision_threshold = threshold;
    config.task.release = ReleaseRule::Last;
    // Rare-outcome settings travel in the manifest to every hospital's training.
    config.task.training.pos_weight = 2.0;
    config.model_card.intended_use = Some("Flag <patients> for review".into());
    config.model_card.limitations = vec!["Synthetic patients only".into()];
    let data_dir = config.data_dir.clone();
    // DP-SGD at every hospital (exact statistics and evaluation counts, which the pooled
    // figures below are compared with), so that each declares an ε the card must carry.
    let dp_sgd = |node: &mut NodeConfig| {
        node.privacy = Some(dp_sgd_policy(50.0));
    };
    let (report, _) = consortium.train_with(config, &NODES, dp_sgd).await;
    let final_evaluation = report.final_evaluation.clone().expect("final evaluation");

    // The released model is the final one, with its scoring and its audit report.
    let released = data_dir.join(RELEASED_MODEL_FILE);
    assert_eq!(report.released, Some((released.clone(), 3)));
    let file = read_model_file(&released).expect("the released model reads back");
    assert_eq!((file.round, &file.model), (3, &report.final_model));
    let scoring = file
        .scoring
        .as_ref()
        .expect("the released model carries its scoring");
    assert_eq!(scoring.decision_threshold, threshold);
    assert_eq!(scoring.schema_text, medfed_e2e::SCHEMA);
    let report_path = data_dir.join("reports").join("round-00003.json");
    let report_bytes = std::fs::read(&report_path).unwrap();
    let audit = file
        .audit
        .as_ref()
        .expect("the released model names its report");
    assert_eq!(audit.report_sha256, file_sha256(&report_bytes));
    let signed = SignedReport::from_json(&report_bytes).unwrap();
    assert_eq!(audit.approved, signed.report.approved);
    assert_eq!(signed.report.model_sha256, file.model.hash().to_hex());
    // The model card beside the reports describes the released model, names the report that
    // judged it, and copies that report's figures; its intervals and calibration come from the
    // pooled counts of the same evaluation.
    let card_path = data_dir.join("reports").join(MODEL_CARD_JSON);
    let card = ModelCard::from_json(&std::fs::read(&card_path).expect("the model card is written"))
        .expect("the model card reads back");
    let released_bytes = std::fs::read(&released).unwrap();
    assert_eq!(card.released_model.round, 3);
    assert_eq!(card.released_model.model_sha256, file.model.hash().to_hex());
    assert_eq!(
        card.released_model.checkpoint_sha256,
        signed.report.checkpoint_sha256
    );
    assert_eq!(
        card.released_model.model_file_sha256,
        file_sha256(&released_bytes)
    );
    assert_eq!(
        card.released_model.report_sha256.as_deref(),
        Some(audit.report_sha256.as_str())
    );
    let performance = card.performance.as_ref().expect("the card's performance");
    assert_eq!(
        Some(&performance.evaluation),
        signed.report.evaluation.as_ref()
    );
    assert_eq!(performance.evaluation.auc, final_evaluation.auc);
    let auc = performance
        .intervals
        .as_ref()
        .and_then(|i| i.auc)
        .expect("the pooled AUC with its interval");
    assert!((auc.value - final_evaluation.auc.unwrap()).abs() < 1e-12);
    assert!(auc.interval.low < auc.value && auc.value < auc.interval.high);
    assert_eq!(card.privacy.per_site, signed.report.privacy);
    assert_eq!(card.privacy.per_site.len(), NODES.len());
    assert!(card.privacy.per_site.iter().all(|p| p.epsilon > 0.0));
    assert_eq!(card.privacy.as_of_round, Some(3));
    assert_eq!(card.fairness.attributes, signed.report.fairness);
    let calibration = card.calibration.as_ref().expect("the card's calibration");
    let binned: f64 = calibration.table.iter().map(|b| b.count).sum();
    assert_eq!(binned, final_evaluation.examples as f64);
    assert_eq!(card.limitations[0].text, "Synthetic patients only");
    let page = std::fs::read_to_string(data_dir.join("reports").join(MODEL_CARD_HTML)).unwrap();
    assert!(page.contains(&card.released_model.model_sha256));
    assert!(page.contains("Flag &lt;patients&gt; for review"));

    // An auditor's tool follows the released model's link to its report, and checks the card
    // against the chain; a released model that states another verdict than its report's, or a
    // card whose figures are not its report's, is refused.
    let tls = consortium.certs.coordinator_tls();
    let verify = |model: &Path, card: &Path| {
        let reports = data_dir.join("reports");
        let args: Vec<std::ffi::OsString> = vec![
            "verify".into(),
            "--reports".into(),
            reports.into(),
            "--cert".into(),
            tls.cert.clone().into(),
            "--ca".into(),
            tls.ca_cert.clone().into(),
            "--model".into(),
            model.into(),
            "--card".into(),
            card.into(),
        ];
        async move {
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            run("medfed-audit", "medfed-audit", &args).await
        }
    };
    let (verified, output) = verify(&released, &card_path).await;
    assert!(
        verified
            && output.contains("is the model audited for round 3")
            && output.contains("describes the released model of round 3"),
        "{output}"
    );
    let mut forged_card = card.clone();
    if let Some(p) = forged_card.performance.as_mut() {
        p.evaluation.auc = Some(0.999);
    }
    let forged_card_path = consortium.dir.path().join("forged_card.json");
    std::fs::write(&forged_card_path, forged_card.to_json_pretty().unwrap()).unwrap();
    let (verified, output) = verify(&released, &forged_card_path).await;
    assert!(
        !verified && output.contains("performance.evaluation differs"),
        "{output}"
    );
    // Text no report carries is covered by the card's signature.
    let mut reworded = card.clone();
    reworded.intended_use.intended_use = Some("Any use".into());
    let reworded_path = consortium.dir.path().join("reworded_card.json");
    std::fs::write(&reworded_path, reworded.to_json_pretty().unwrap()).unwrap();
    std::fs::copy(
        data_dir.join("reports").join(MODEL_CARD_SIGNATURE),
        consortium.dir.path().join("reworded_card.json.sig"),
    )
    .unwrap();
    let (verified, output) = verify(&released, &reworded_path).await;
    assert!(
        !verified && output.contains("signature does not verify"),
        "{output}"
    );
    let mut forged = file.clone();
    if let Some(link) = forged.audit.as_mut() {
        link.approved = !link.approved;
    }
    let forged_path = consortium.dir.path().join("forged.safetensors");
    std::fs::write(&forged_path, encode_model_file(&forged).unwrap()).unwrap();
    let (verified, output) = verify(&forged_path, &card_path).await;
    assert!(
        !verified && output.contains("states a verdict its report"),
        "{output}"
    );

    // Every round's checkpoint carries the same scoring, the initial model's too.
    for round in 0..=3 {
        let path = data_dir
            .join("checkpoints")
            .join(format!("round-{round:05}.safetensors"));
        let checkpoint = read_model_file(&path).unwrap();
        assert_eq!(checkpoint.scoring.as_ref(), Some(scoring), "round {round}");
        assert_eq!(checkpoint.audit, None, "round {round}");
    }

    // Each hospital scores its own held-out patients with the released model.
    let mut pooled = Vec::new();
    for name in NODES {
        let node = consortium.node_config(name, "127.0.0.1:1".parse().unwrap());
        let toml = consortium.dir.path().join(format!("{name}.toml"));
        std::fs::write(&toml, node_toml(&node)).unwrap();
        let scores = consortium.dir.path().join(format!("{name}-scores.csv"));
        predict_held_out(&released, &toml, &scores).await;
        // Each row is named by its row in the file and by the schema's dropped identifier.
        let header = std::fs::read_to_string(&scores).unwrap();
        assert!(
            header.starts_with("row,patient_id,score,class,label\n"),
            "{header}"
        );
        let (scores, labels) = scores_and_labels(&scores);
        assert_eq!(scores.len(), 50, "a quarter of 200 rows is held out");
        pool(&mut pooled, &scores, &labels, threshold);
    }
    assert_reproduces(&pooled, &final_evaluation);
}

/// The Python of `.deps/onnx-venv`, with onnxruntime, which `scripts/setup` installs.
fn onnx_python() -> std::path::PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/onnx-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup, which installs onnxruntime for this test",
        python.display()
    );
    python
}

/// The `score` column of a scores file, in order.
fn score_column(path: &Path) -> Vec<f32> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().clone();
    let score = header.iter().position(|h| h == "score").unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[score].parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_onnx_export_scores_as_predict_does_with_missing_values_inside() {
    subscribe();
    let consortium = Consortium::new(&NODES, 120);
    // Blood pressure imputed, smoking's blanks and `NA`s a level: the export must encode both.
    assert!(consortium.declare_and_blank_missing_values(&NODES) > 40);
    let config = consortium.coordinator_config(1, 3);
    let data_dir = config.data_dir.clone();
    consortium.train_with(config, &NODES, |_| {}).await;
    let released = data_dir.join(RELEASED_MODEL_FILE);
    let dir = consortium.dir.path();
    let onnx = dir.join("model.onnx");
    medfed_node(&[
        "export".as_ref(),
        "--model".as_ref(),
        released.as_os_str(),
        "--onnx".as_ref(),
        onnx.as_os_str(),
    ])
    .await;
    let patients = consortium.csv("hospital-a");
    let ours = dir.join("predict.csv");
    medfed_node(&[
        "predict".as_ref(),
        "--model".as_ref(),
        released.as_os_str(),
        "--csv".as_ref(),
        patients.as_os_str(),
        "--out".as_ref(),
        ours.as_os_str(),
    ])
    .await;
    let theirs = dir.join("onnxruntime.csv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx_scores.py");
    let output = Command::new(onnx_python())
        .arg(script)
        .args([&onnx, &patients, &theirs])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "onnxruntime failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (ours, theirs) = (score_column(&ours), score_column(&theirs));
    assert_eq!(ours.len(), 120, "every row scored, blanks included");
    assert_eq!(ours.len(), theirs.len());
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-5,
        "onnxruntime and predict differ by up to {worst}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_scores_the_rows_it_can_and_lists_the_others_with_why() {
    subscribe();
    let consortium = Consortium::new(&NODES, 120);
    let config = consortium.coordinator_config(1, 3);
    let data_dir = config.data_dir.clone();
    let (report, _) = consortium.train_with(config, &NODES, |_| {}).await;
    let released = data_dir.join(RELEASED_MODEL_FILE);
    assert!(report.released.is_some());

    // New patients: no outcome column, one unreadable age, one unknown sex.
    let dir = consortium.dir.path();
    let patients = dir.join("new-patients.csv");
    std::fs::write(
        &patients,
        "patient_id,age,sex,blood_pressure,smoker\n\
         p1,61,F,140,no\n\
         p2,sixty,M,120,yes\n\
         p3,47,X,130,no\n\
         p4,72,M,165,yes\n",
    )
    .unwrap();
    let (scores, errors) = (dir.join("scores.csv"), dir.join("scores.errors.csv"));
    let output = medfed_node(&[
        "predict".as_ref(),
        "--model".as_ref(),
        released.as_os_str(),
        "--csv".as_ref(),
        patients.as_os_str(),
        "--out".as_ref(),
        scores.as_os_str(),
    ])
    .await;
    assert!(
        output.contains("scored 2 rows") && output.contains("2 rows not scored"),
        "{output}"
    );
    let scored = std::fs::read_to_string(&scores).unwrap();
    let lines: Vec<&str> = scored.lines().collect();
    assert_eq!(lines[0], "row,patient_id,score,class");
    assert!(
        lines[1].starts_with("2,p1,") && lines[2].starts_with("5,p4,"),
        "{scored}"
    );
    assert_eq!(lines.len(), 3, "{scored}");
    let errors = std::fs::read_to_string(&errors).unwrap();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines[0], "row,column,value,problem,message");
    assert!(
        lines[1].starts_with("3,age,sixty,not a number,")
            && lines[2].starts_with("4,sex,X,unknown level,"),
        "{errors}"
    );
    assert_eq!(lines.len(), 3, "{errors}");
}

/// Issue 14, item 5: hospitals name their own held-out patients. Hospital A holds out the rows
/// its `cohort` column marks (`validation` or `test`), hospital B a separate file of patients
/// (its CSV all trains), hospital C a random quarter; training completes, and `predict
/// --held-out` on each scores exactly the rows its evaluation used: pooled, they give the
/// coordinator's final AUC, accuracy and loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predict_on_named_cohorts_and_a_held_out_file_reproduces_the_pooled_final_evaluation() {
    use medfed_node::data::Holdout;

    subscribe();
    let consortium = Consortium::new(&NODES, 200);
    let dir = consortium.dir.path();
    // The split column is dropped by the consortium's schema: never a model input.
    let schema = medfed_e2e::SCHEMA.replace(
        "drop = [\"patient_id\"]",
        "drop = [\"patient_id\", \"cohort\"]",
    );
    std::fs::write(&consortium.schema, &schema).unwrap();
    // Hospital A: a cohort column; every 5th patient is validation, every 7th (not 5th) test,
    // one has a blank cohort (it trains).
    let a = std::fs::read_to_string(consortium.csv(NODES[0])).unwrap();
    let mut named = 0;
    let mut out = String::new();
    for (i, line) in a.lines().enumerate() {
        let cohort = match i {
            0 => "cohort",
            _ if i % 5 == 0 => "validation",
            _ if i % 7 == 0 => " test ",
            3 => "",
            _ => "development",
        };
        named += usize::from(i > 0 && (i % 5 == 0 || i % 7 == 0));
        out.push_str(&format!("{line},{cohort}\n"));
    }
    std::fs::write(consortium.csv(NODES[0]), out).unwrap();
    // Hospital B: its last 60 patients in a separate held-out file.
    let b = std::fs::read_to_string(consortium.csv(NODES[1])).unwrap();
    let lines: Vec<&str> = b.lines().collect();
    let (train_rows, held_rows) = lines[1..].split_at(140);
    let held_out_csv = dir.join("hospital-b-held-out.csv");
    std::fs::write(
        consortium.csv(NODES[1]),
        format!("{}\n{}\n", lines[0], train_rows.join("\n")),
    )
    .unwrap();
    std::fs::write(
        &held_out_csv,
        format!("{}\n{}\n", lines[0], held_rows.join("\n")),
    )
    .unwrap();
    let holdout = |name: &str| match name {
        "hospital-a" => Some(Holdout::Column {
            column: "cohort".into(),
            values: vec!["validation".into(), "test".into()],
        }),
        "hospital-b" => Some(Holdout::File(held_out_csv.clone())),
        _ => None,
    };

    let threshold = DecisionThreshold::new(0.4).unwrap();
    let mut config = consortium.coordinator_config(2, 3);
    config.task.decision_threshold = threshold;
    config.task.release = ReleaseRule::Last;
    let data_dir = config.data_dir.clone();
    let (report, _) = consortium
        .train_with(config, &NODES, |node| {
            let name = node.data.csv.file_stem().unwrap().to_str().unwrap();
            if let Some(holdout) = holdout(name) {
                node.data.holdout = holdout;
            }
        })
        .await;
    let final_evaluation = report.final_evaluation.clone().expect("final evaluation");
    assert_eq!(final_evaluation.examples, (named + 60 + 50) as u64);
    let released = data_dir.join(RELEASED_MODEL_FILE);

    let mut pooled = Vec::new();
    for (name, expected) in [(NODES[0], named), (NODES[1], 60), (NODES[2], 50)] {
        let mut node = consortium.node_config(name, "127.0.0.1:1".parse().unwrap());
        if let Some(holdout) = holdout(name) {
            node.data.holdout = holdout;
        }
        let toml = dir.join(format!("{name}.toml"));
        std::fs::write(&toml, node_toml(&node)).unwrap();
        let scores = dir.join(format!("{name}-scores.csv"));
        predict_held_out(&released, &toml, &scores).await;
        let text = std::fs::read_to_string(&scores).unwrap();
        if name == NODES[0] {
            // The rows scored are the named cohorts', by their row in the file (the header is
            // row 1, so patient i sits in row i + 1).
            let rows: Vec<usize> = text
                .lines()
                .skip(1)
                .map(|l| l.split(',').next().unwrap().parse().unwrap())
                .collect();
            assert!(
                rows.iter().all(|r| (r - 1) % 5 == 0 || (r - 1) % 7 == 0),
                "{rows:?}"
            );
        }
        let (scores, labels) = scores_and_labels(&scores);
        assert_eq!(scores.len(), expected, "{name}");
        pool(&mut pooled, &scores, &labels, threshold);
    }
    assert_reproduces(&pooled, &final_evaluation);
}

/// The site-figure tests' consortium: three hospitals that accept sums over two (so that one
/// revealer leaves each of the others one hospital to hide among), `hospital-a` listed in the
/// manifest as releasing its site figure, one training round and the final evaluation.
fn site_figure_task(consortium: &Consortium) -> medfed_coordinator::config::CoordinatorConfig {
    let mut config = consortium.coordinator_config(1, 3);
    config.task.release = ReleaseRule::Last;
    config.task.site_figures = vec!["hospital-a".into()];
    config
}

/// The final evaluation's signed report (the final model is round 1's).
fn final_report(data_dir: &Path) -> medfed_protocol::report::AuditReport {
    let bytes = std::fs::read(data_dir.join("reports").join("round-00001.json")).unwrap();
    SignedReport::from_json(&bytes).unwrap().report
}

/// How many messages of `kind` left the node whose state folder is `state_dir`.
fn sent(state_dir: &Path, kind: &str) -> usize {
    medfed_node::egress::EgressLog::read(state_dir)
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_opted_in_hospitals_exact_site_figure_is_in_the_report_and_equals_predict_on_its_rows() {
    use medfed_node::policy::SiteFigures;

    subscribe();
    let consortium = Consortium::new(&NODES, 200);
    let config = site_figure_task(&consortium);
    let data_dir = config.data_dir.clone();
    let (report, nodes) = consortium
        .train_with(config, &NODES, |node| {
            node.policy.min_other_hospitals = 1;
            if node.state_dir.ends_with("hospital-a") {
                node.policy.release_site_figures = SiteFigures::Exact;
            }
        })
        .await;
    let audit = final_report(&data_dir);
    assert_eq!(audit.participants, NODES);
    assert_eq!(
        audit.evaluation.as_ref(),
        report.final_evaluation.as_ref(),
        "the pooled figure is reported as before"
    );
    // Only the hospital that opted in, and that the manifest lists, has a site figure.
    let [site] = audit.site_evaluations.as_slice() else {
        panic!("one site figure expected: {:?}", audit.site_evaluations);
    };
    assert_eq!((site.node.as_str(), site.noised), ("hospital-a", false));
    let site_metrics = site
        .metrics
        .as_ref()
        .expect("hospital-a holds out patients");
    // The earlier round's report has none: site figures are of the final evaluation.
    let first = std::fs::read(data_dir.join("reports").join("round-00000.json")).unwrap();
    assert!(
        SignedReport::from_json(&first)
            .unwrap()
            .report
            .site_evaluations
            .is_empty()
    );

    // It is the model on hospital-a's own held-out rows, as predict scores them there.
    let released = data_dir.join(RELEASED_MODEL_FILE);
    let toml = consortium.dir.path().join("hospital-a.toml");
    let mut node = nodes[0].clone();
    node.policy.release_site_figures = SiteFigures::No;
    std::fs::write(&toml, node_toml(&node)).unwrap();
    let scores = consortium.dir.path().join("hospital-a-scores.csv");
    predict_held_out(&released, &toml, &scores).await;
    let (scores, labels) = scores_and_labels(&scores);
    let mut own = Vec::new();
    pool(&mut own, &scores, &labels, DecisionThreshold::DEFAULT);
    assert_reproduces(&own, site_metrics);
    // And not the pooled figure: the other hospitals' patients are not in it.
    assert_ne!(Some(site_metrics), audit.evaluation.as_ref());

    // Exactly one site figure left hospital-a; none left the others, and none was asked of
    // them.
    assert_eq!(sent(&nodes[0].state_dir, "site_figure"), 1);
    for other in &nodes[1..] {
        assert_eq!(sent(&other.state_dir, "site_figure"), 0);
        assert_eq!(sent(&other.state_dir, "declined"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_noised_site_figure_is_the_very_vector_in_the_sum_and_costs_no_epsilon() {
    use medfed_node::config::{EvaluationNoiseConfig, PrivacyConfig};
    use medfed_node::ledger::{PrivacyLedger, Release};
    use medfed_node::policy::SiteFigures;
    use medfed_node::site_figures::{SiteFigureStore, SiteRecord};
    use medfed_protocol::contribution::RoundLayout;
    use medfed_protocol::evaluation::ScoreBins;

    subscribe();
    let consortium = Consortium::new(&NODES, 200);
    let config = site_figure_task(&consortium);
    let data_dir = config.data_dir.clone();
    const SIGMA: f64 = 2.0;
    let (_, nodes) = consortium
        .train_with(config, &NODES, |node| {
            node.policy.min_other_hospitals = 1;
            if node.state_dir.ends_with("hospital-a") {
                node.policy.release_site_figures = SiteFigures::Noised;
                node.privacy = Some(PrivacyConfig {
                    evaluation: EvaluationNoiseConfig {
                        noise: SIGMA,
                        ..EvaluationNoiseConfig::default()
                    },
                    ..dp_sgd_policy(50.0)
                });
            }
        })
        .await;
    let audit = final_report(&data_dir);
    let [site] = audit.site_evaluations.as_slice() else {
        panic!("one site figure expected: {:?}", audit.site_evaluations);
    };
    assert_eq!((site.node.as_str(), site.noised), ("hospital-a", true));
    let metrics = site.metrics.as_ref().expect("50 held-out patients, noised");
    // 50 held-out patients; the confusion matrix's total carries four cells' noise.
    assert!(
        (metrics.examples as f64 - 50.0).abs() <= 6.0 * 2.0 * SIGMA,
        "{metrics:?}"
    );

    // The figure is the vector hospital-a journaled when it sent its masked final-evaluation
    // input: the last `sent` line, the one released.
    let state = &nodes[0].state_dir;
    let lines = SiteFigureStore::read(state).unwrap();
    let Some(SiteRecord::Released { round, attempt, .. }) = lines.last() else {
        panic!("the release is journaled last: {lines:?}");
    };
    let journaled = lines
        .iter()
        .find_map(|l| match l {
            SiteRecord::Sent {
                round: r,
                attempt: a,
                values,
                noised: true,
                ..
            } if (r, a) == (round, attempt) => Some(values.clone()),
            _ => None,
        })
        .expect("the released attempt's vector");
    let layout = RoundLayout {
        params: 0,
        train: false,
        evaluate: true,
        groups: medfed_protocol::schema::Schema::parse(medfed_e2e::SCHEMA)
            .unwrap()
            .audit_groups()
            .len(),
        bins: ScoreBins::FINE,
        distributed: false,
    };
    let from_journal = layout
        .decode(&journaled)
        .and_then(|t| t.eval)
        .and_then(|e| e.metrics());
    assert_eq!(from_journal.as_ref(), Some(metrics));

    // No ε for the site figure: the ledger holds one evaluation entry per evaluation (round
    // 1's and the final one), and nothing after the final evaluation's.
    let ledger = PrivacyLedger::read(state).unwrap();
    let evaluations: Vec<u64> = ledger
        .iter()
        .filter(|e| e.release == Release::EvaluationCounts)
        .map(|e| e.round)
        .collect();
    assert_eq!(evaluations, [1, 2], "{ledger:?}");
    assert_eq!(
        ledger.last().map(|e| e.release),
        Some(Release::EvaluationCounts)
    );
    assert_eq!(sent(state, "site_figure"), 1);
}
