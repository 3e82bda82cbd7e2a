//! `medfed-node plan`: what a node would release under a task manifest, before it joins — run
//! as the operator runs it, on a real configuration, data file and signed manifest.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use medfed_certs::{MemberList, load_report_signing_key, make_dev_consortium};
use medfed_node::config::DEFAULT_STATISTICS_NOISE;
use medfed_node::ledger::{LedgerEntry, PrivacyLedger, Release};
use medfed_protocol::accounting::{self, Accountant, Mechanism};
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::distributed_dp::{DEFAULT_ROUNDING_BETA, DEFAULT_SCALED_CLIP};
use medfed_protocol::evaluation::EvalCounts;
use medfed_protocol::evaluation::ScoreBins;
use medfed_protocol::fairness::GroupCounts;
use medfed_protocol::manifest::{
    Digest32, DistributedDpPlan, FractionalBitsRule, MANIFEST_FORMAT, ReleasePlan,
    SecureAggregationPlan, SignedManifest, StrategyRecord, TaskManifest, ThresholdRule,
    TrainingRule,
};
use medfed_protocol::model::{ModelKind, ModelSpec};
use medfed_protocol::schema::Schema;
use medfed_protocol::stats_release::StatisticsNoise;
use serde_json::Value;

const SCHEMA: &str = medfed_protocol::schema::EXAMPLE_SCHEMA;

const ROUNDS: u64 = 5;

/// A hospital's folder: certificates, schema, 200 rows, `node.toml` with `privacy` appended.
fn hospital(dir: &Path, privacy: &str) -> (Schema, MemberList) {
    let consortium = make_dev_consortium(&dir.join("certs"), &["hospital-a".into()]).unwrap();
    std::fs::write(dir.join("schema.toml"), SCHEMA).unwrap();
    let mut csv = String::from("id,age,sex,outcome\n");
    for i in 0..200 {
        let sex = if i % 2 == 0 { "F" } else { "M" };
        csv.push_str(&format!("{i},{},{sex},{}\n", 30 + i % 50, i % 3 % 2));
    }
    std::fs::write(dir.join("site.csv"), csv).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        format!(
            r#"
coordinator = "127.0.0.1:7400"
state_dir = "state"
[tls]
ca_cert = "certs/ca.pem"
cert = "certs/hospital-a.pem"
key = "certs/hospital-a.key"
[data]
csv = "site.csv"
schema = "schema.toml"
[policy]
members = "certs/members.toml"
{privacy}
"#
        ),
    )
    .unwrap();
    (
        Schema::parse(SCHEMA).unwrap(),
        MemberList::load(&consortium.members).unwrap(),
    )
}

const PRIVATE: &str = r#"
[privacy]
target_epsilon = 8.0
delta = 1e-5
noise_multiplier = "auto"
max_grad_norm = 1.0
"#;

fn manifest(schema: &Schema, members: &MemberList) -> TaskManifest {
    let model = ModelSpec {
        kind: ModelKind::Mlp { hidden: vec![4] },
        input_dim: schema.num_features(),
    };
    TaskManifest {
        format: MANIFEST_FORMAT.into(),
        schema_digest: Digest32(schema.digest()),
        members_digest: Digest32(members.digest()),
        releases: ReleasePlan::for_task(
            schema.stats_len(),
            schema.audit_groups().len(),
            model.layout().len(),
            ScoreBins::FINE,
        ),
        model,
        rounds: ROUNDS,
        min_nodes: 3,
        training: TrainingRule {
            local_epochs: 1,
            learning_rate: 0.05,
            batch_size: 32,
            seed_base: 1,
            pos_weight: 1.0,
        },
        strategy: StrategyRecord {
            name: "fed_avg".into(),
            hyper_parameters: BTreeMap::from([("server_learning_rate".into(), 1.0)]),
        },
        secure_aggregation: Some(SecureAggregationPlan {
            neighbours: None,
            threshold: ThresholdRule::TwoThirdsPlusOne,
            update_clip: 1024.0,
            fractional_bits: FractionalBitsRule::Fit,
            upload_bits: None,
        }),
        distributed_dp: None,
    }
}

/// Signs `manifest` with the dev coordinator's key and writes it to `manifest.json`.
fn write(dir: &Path, manifest: TaskManifest) -> SignedManifest {
    let key = load_report_signing_key(&dir.join("certs/coordinator.key")).unwrap();
    let signed = manifest.sign(&key).unwrap();
    std::fs::write(dir.join("manifest.json"), signed.to_json()).unwrap();
    signed
}

fn plan(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medfed-node"))
        .arg("plan")
        .arg("--config")
        .arg(dir.join("node.toml"))
        .arg("--manifest")
        .arg(dir.join("manifest.json"))
        .args(extra)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_plan_lists_every_release_its_bytes_and_its_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, members) = hospital(dir.path(), PRIVATE);
    let signed = write(dir.path(), manifest(&schema, &members));
    let cert = dir.path().join("certs/coordinator.pem");
    let output = plan(
        dir.path(),
        &["--json", "--coordinator-cert", cert.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["accepted"], true);
    assert_eq!(json["signature_checked"], true);
    assert_eq!(json["manifest"], signed.manifest.digest().to_hex());

    let exchanges = json["exchanges"].as_array().unwrap();
    // Statistics, every training round, the final evaluation.
    assert_eq!(exchanges.len(), 1 + ROUNDS as usize + 1);
    let stats = &exchanges[0];
    assert_eq!(stats["kind"], "statistics");
    assert_eq!(stats["total_figures"], schema.stats_len() as u64);
    // Masked statistics travel as four 32-bit words each (wide encoding): 16 bytes a figure.
    let stats_bytes = stats["wire_bytes"].as_u64().unwrap();
    let stats_words = 4 * schema.stats_len() as u64;
    assert!(
        (4 * stats_words..4 * stats_words + 32).contains(&stats_bytes),
        "{stats_bytes}"
    );

    let params = signed.manifest.model.layout().len();
    let groups = schema.audit_groups().len();
    let counts = EvalCounts::VECTOR_LEN + groups * GroupCounts::VECTOR_LEN;
    // The statistics are noised by default under [privacy]: their release is the first cost.
    let statistics_epsilon = stats["epsilon_after"].as_f64().unwrap();
    assert!(statistics_epsilon > 0.0);
    assert_eq!(stats["epsilon_round"].as_f64().unwrap(), statistics_epsilon);
    let mut previous = statistics_epsilon;
    for (i, exchange) in exchanges[1..=ROUNDS as usize].iter().enumerate() {
        assert_eq!(exchange["round"], i as u64 + 1);
        assert_eq!(exchange["kind"], "training");
        assert_eq!(exchange["total_figures"], (counts + params + 1) as u64);
        let words = RoundLayout {
            params,
            train: true,
            evaluate: true,
            groups,
            bins: ScoreBins::FINE,
            distributed: false,
        }
        .encoding(
            &signed
                .manifest
                .secure_aggregation
                .as_ref()
                .unwrap()
                .update_encoding(3),
        )
        .encoded_len() as u64;
        let bytes = exchange["wire_bytes"].as_u64().unwrap();
        assert!(
            (4 * words..4 * words + 32).contains(&bytes),
            "{bytes} for {words} words"
        );
        // Each training round spends more of the budget.
        let epsilon = exchange["epsilon_after"].as_f64().unwrap();
        assert!(
            epsilon > previous,
            "round {}: {epsilon} after {previous}",
            i + 1
        );
        previous = epsilon;
    }
    let last = &exchanges[ROUNDS as usize + 1];
    assert_eq!(last["kind"], "final_evaluation");
    assert_eq!(last["total_figures"], counts as u64);
    // With σ chosen for the plan, the whole task — the statistics included — fits the budget,
    // and uses most of it.
    let total = json["privacy"]["total"].as_f64().unwrap();
    assert_eq!(json["privacy"]["target_epsilon"], 8.0);
    assert!(total <= 8.0 && total > 7.0, "{total}");
    assert_eq!(last["epsilon_after"].as_f64().unwrap(), total);

    // Planning reads the ledger but neither creates nor locks the state folder.
    assert!(!dir.path().join("state").exists());
    // The same for the operator, as text.
    let output = plan(dir.path(), &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for needle in [
        "policy: accepted",
        "signature not checked",
        "statistics",
        "final_evaluation",
        "of a budget of 8",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from\n{stdout}");
    }
}

#[test]
fn the_plan_counts_what_the_ledger_already_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, members) = hospital(dir.path(), PRIVATE);
    write(dir.path(), manifest(&schema, &members));
    let spent_before = |dir: &Path| -> f64 {
        let output = plan(dir, &["--json"]);
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        json["privacy"]["spent_before"].as_f64().unwrap()
    };
    assert_eq!(spent_before(dir.path()), 0.0);
    // A release already in the ledger (as a node run leaves it) counts before the task.
    let mut ledger = PrivacyLedger::open(&dir.path().join("state")).unwrap();
    ledger
        .append(LedgerEntry {
            time_ms: 1,
            round: 1,
            release: Release::Training,
            mechanisms: Vec::new(),
            accountant: Accountant::Rdp,
            steps: 10,
            sample_rate: 0.2,
            noise_multiplier: 1.0,
            delta: 1e-5,
            epsilon_after: 1.0,
            released_count: None,
            local_mechanisms: Vec::new(),
            local_epsilon_after: None,
        })
        .unwrap();
    let spent = ledger.epsilon(Accountant::Rdp, &[], 1e-5).unwrap();
    drop(ledger);
    assert!(spent > 0.0);
    assert_eq!(spent_before(dir.path()), spent);
}

#[test]
fn a_manifest_the_policy_refuses_is_shown_with_why_and_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, members) = hospital(dir.path(), PRIVATE);
    let mut pair = manifest(&schema, &members);
    pair.min_nodes = 2;
    write(dir.path(), pair);
    let output = plan(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("REFUSED") && stdout.contains("other hospitals"),
        "{stdout}"
    );
}

#[test]
fn a_budget_that_cannot_pay_for_one_round_refuses_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = PRIVATE
        .replace("target_epsilon = 8.0", "target_epsilon = 0.05")
        .replace("\"auto\"", "0.8");
    let (schema, members) = hospital(dir.path(), &tiny);
    write(dir.path(), manifest(&schema, &members));
    let output = plan(dir.path(), &["--json"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["accepted"], false);
    let refusal = json["refusal"].as_str().unwrap();
    assert!(refusal.contains("not even one round fits"), "{refusal}");
}

#[test]
fn a_tampered_manifest_fails_its_signature_check() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, members) = hospital(dir.path(), PRIVATE);
    let mut signed = write(dir.path(), manifest(&schema, &members));
    signed.manifest.training.learning_rate = 0.5;
    std::fs::write(dir.path().join("manifest.json"), signed.to_json()).unwrap();
    let cert = dir.path().join("certs/coordinator.pem");
    let output = plan(dir.path(), &["--coordinator-cert", cert.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("signature does not verify"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn under_the_pld_accountant_the_same_budget_buys_less_noise_and_the_plan_still_fits_it() {
    let sigma_and_total = |privacy: &str| -> (f64, f64) {
        let dir = tempfile::tempdir().unwrap();
        let (schema, members) = hospital(dir.path(), privacy);
        write(dir.path(), manifest(&schema, &members));
        let output = plan(dir.path(), &["--json"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            json["privacy"]["noise_multiplier"].as_f64().unwrap(),
            json["privacy"]["total"].as_f64().unwrap(),
        )
    };
    let (rdp_sigma, rdp_total) = sigma_and_total(PRIVATE);
    let (pld_sigma, pld_total) = sigma_and_total(&format!("{PRIVATE}accountant = \"pld\"\n"));
    // The PLD accountant's ε is tighter, so the planner needs less noise for the same budget
    // (every release, the statistics and evaluations included, is composed under it).
    assert!(
        pld_sigma < 0.97 * rdp_sigma,
        "σ {pld_sigma} under PLD, {rdp_sigma} under RDP"
    );
    for total in [rdp_total, pld_total] {
        assert!(total <= 8.0 && total > 7.0, "{total}");
    }
}

/// `PRIVATE` in distributed mode with a fixed noise multiplier (distributed DP takes the task's)
/// and exact evaluation counts (the forecast is then the statistics and the training rounds).
const DISTRIBUTED: &str = r#"
[privacy]
target_epsilon = 8.0
delta = 1e-5
noise_multiplier = 1.0
max_grad_norm = 1.0
mode = "distributed"
[privacy.evaluation]
noise = 0
"#;

/// `manifest` under distributed DP: q = 0.1, z = 1, C = 1, t = 3 of at most 3.
fn distributed(schema: &Schema, members: &MemberList) -> TaskManifest {
    let mut m = manifest(schema, members);
    m.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(3);
    m.releases = m.releases.clone().distributed();
    m.distributed_dp = Some(DistributedDpPlan {
        sample_rate: 0.1,
        noise_multiplier: 1.0,
        clip_norm: 1.0,
        scale: DEFAULT_SCALED_CLIP,
        rounding_beta: DEFAULT_ROUNDING_BETA,
        threshold: 3,
        max_nodes: 3,
    });
    m
}

#[test]
fn a_distributed_task_is_planned_with_its_central_and_local_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, members) = hospital(dir.path(), DISTRIBUTED);
    let manifest = distributed(&schema, &members);
    let params = manifest.distributed_params().unwrap().unwrap();
    write(dir.path(), manifest);
    let output = plan(dir.path(), &["--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["accepted"], true);
    // The update block is one word a parameter, no weight.
    let params_len = params.config().dimension as u64;
    let training = &json["exchanges"][1];
    assert_eq!(training["kind"], "training");
    let update = training["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["what"].as_str().unwrap().starts_with("update"))
        .unwrap();
    assert_eq!(update["count"], params_len);
    // Central: the noised statistics (on by default) and five rounds of the sum of t shares;
    // local: the same with each round's share alone, which is larger.
    let statistics = StatisticsNoise::new(DEFAULT_STATISTICS_NOISE)
        .unwrap()
        .mechanisms(&schema);
    let compose = |round: Mechanism| {
        let mut all = statistics.clone();
        all.push(round.repeated(ROUNDS));
        accounting::epsilon(Accountant::Rdp, &all, 1e-5).unwrap()
    };
    let central = compose(params.central_mechanism(0.1, 1));
    let local = compose(params.local_mechanism(0.1, 1));
    let privacy = &json["privacy"];
    assert!((privacy["total"].as_f64().unwrap() - central).abs() < 1e-9 * central);
    assert!((privacy["local"]["total"].as_f64().unwrap() - local).abs() < 1e-9 * local);
    assert!(local > central, "local {local} vs central {central}");
    let local_rounds = privacy["local"]["rounds"].as_array().unwrap();
    assert_eq!(local_rounds.len() as u64, ROUNDS + 1);
    let text_output = text(&plan(dir.path(), &[]).stdout);
    assert!(
        text_output.contains("the ε above is central") && text_output.contains("local ε after"),
        "{text_output}"
    );
}

#[test]
fn a_node_refuses_a_task_of_the_other_privacy_mode_naming_both() {
    for (privacy, distributed_task, node, task) in [
        (DISTRIBUTED, false, "distributed", "local"),
        (PRIVATE, true, "local", "distributed"),
        // No [privacy] section: the node's figures carry no noise share, so it is local.
        ("", true, "local", "distributed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (schema, members) = hospital(dir.path(), privacy);
        let manifest = if distributed_task {
            distributed(&schema, &members)
        } else {
            manifest(&schema, &members)
        };
        write(dir.path(), manifest);
        let output = plan(dir.path(), &["--json"]);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        let refusal = json["refusal"].as_str().unwrap();
        assert_eq!(
            refusal,
            format!("the task's privacy mode is {task}; the hospital's is {node}")
        );
    }
}

#[test]
fn a_local_cap_below_one_distributed_round_refuses_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let capped = DISTRIBUTED.replace(
        "mode = \"distributed\"",
        "mode = \"distributed\"\nmax_local_epsilon = 0.01",
    );
    let (schema, members) = hospital(dir.path(), &capped);
    write(dir.path(), distributed(&schema, &members));
    let output = plan(dir.path(), &["--json"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let refusal = json["refusal"].as_str().unwrap();
    assert!(refusal.contains("local privacy cap"), "{refusal}");
    assert_eq!(json["privacy"]["local"]["max_local_epsilon"], 0.01);
}

/// Quantised uploads: each training round's bytes are those of its packed words, the update
/// block ⌈params / 4⌉ words in 8-bit lanes, and the plan says so.
#[test]
fn a_quantised_plan_forecasts_the_packed_words() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, members) = hospital(dir.path(), "");
    let mut manifest = manifest(&schema, &members);
    manifest.model.kind = ModelKind::Mlp { hidden: vec![64] };
    manifest.releases = ReleasePlan::for_task(
        schema.stats_len(),
        schema.audit_groups().len(),
        manifest.model.layout().len(),
        ScoreBins::FINE,
    );
    let fixed = manifest.clone();
    manifest.secure_aggregation.as_mut().unwrap().upload_bits = Some(8);
    let bytes = |manifest: TaskManifest| {
        write(dir.path(), manifest);
        let output = plan(dir.path(), &["--json"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        let training = &json["exchanges"][1];
        assert_eq!(training["kind"], "training");
        (
            training["wire_bytes"].as_u64().unwrap(),
            json["transport"].as_str().unwrap().to_owned(),
        )
    };
    let params = manifest.model.layout().len();
    let (quantised, transport) = bytes(manifest);
    let (unquantised, _) = bytes(fixed);
    assert_eq!(
        unquantised - quantised,
        4 * (params - params.div_ceil(4)) as u64
    );
    assert!(
        transport.contains("quantised to 8 bits a value, 4 values a word"),
        "{transport}"
    );
}
