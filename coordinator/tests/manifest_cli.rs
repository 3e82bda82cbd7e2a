//! `medfed-coordinator manifest`: the signed task manifest a configuration describes, written
//! without training, verifiable with the coordinator's certificate.

use std::path::Path;
use std::process::{Command, Output};

use medfed_certs::{MemberList, coordinator_report_key, make_dev_consortium};
use medfed_protocol::manifest::{SignedManifest, ThresholdRule};
use medfed_protocol::schema::Schema;

const SCHEMA: &str = medfed_protocol::schema::EXAMPLE_SCHEMA;

fn manifest(dir: &Path, members: &str) -> Output {
    std::fs::write(dir.join("schema.toml"), SCHEMA).unwrap();
    std::fs::write(
        dir.join("coordinator.toml"),
        format!(
            r#"
listen = "127.0.0.1:0"
data_dir = "state"
schema = "schema.toml"
{members}
[tls]
ca_cert = "certs/ca.pem"
cert = "certs/coordinator.pem"
key = "certs/coordinator.key"
[task]
model = {{ kind = "mlp", hidden = [8] }}
rounds = 7
min_nodes = 3
seed = 5
[task.training]
learning_rate = 0.2
[secure_aggregation]
threshold = 3
"#
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_medfed-coordinator"))
        .args(["manifest", "--config"])
        .arg(dir.join("coordinator.toml"))
        .arg("--out")
        .arg(dir.join("manifest.json"))
        .output()
        .unwrap()
}

#[test]
fn the_manifest_states_the_configured_plan_and_is_signed_by_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_dev_consortium(&dir.path().join("certs"), &["a".into(), "b".into()]).unwrap();
    let output = manifest(dir.path(), r#"members = "certs/members.toml""#);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    // What it prints is what it writes.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        written.trim()
    );
    let signed = SignedManifest::from_json(&written).unwrap();
    let key = coordinator_report_key(&certs.coordinator.cert, &certs.ca_cert).unwrap();
    signed
        .verify(&key)
        .expect("signed by the coordinator's key");
    let m = &signed.manifest;
    assert_eq!(m.schema_digest.0, Schema::parse(SCHEMA).unwrap().digest());
    assert_eq!(
        m.members_digest.0,
        MemberList::load(&certs.members).unwrap().digest()
    );
    assert_eq!((m.rounds, m.min_nodes), (7, 3));
    assert_eq!(m.training.learning_rate, 0.2);
    assert_eq!(m.training.plan(2).seed, 5 * 1_000_003 + 2);
    assert_eq!(
        m.secure_aggregation.as_ref().unwrap().threshold,
        ThresholdRule::Fixed(3)
    );
    assert_eq!(m.strategy.name, "fed_avg");
    // Nothing was trained: no state beyond the configuration's folder.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn a_configuration_without_the_member_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_dev_consortium(&dir.path().join("certs"), &["a".into()]).unwrap();
    let output = manifest(dir.path(), "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("members"), "{stderr}");
    assert!(!dir.path().join("manifest.json").exists());
}
