//! The coordinator's task manifest: the plan its configuration describes, stated once, signed
//! with its report key, written as `manifest.json` in its data folder and sent in every
//! `Welcome`. The training loop takes each round's plan, threshold and update encoding from it,
//! so every request it sends follows what the nodes approved.

use std::path::{Path, PathBuf};

use medfed_certs::{MemberList, load_report_signing_key};
use medfed_protocol::manifest::{
    Digest32, FractionalBitsRule, MANIFEST_FORMAT, ManifestError, ReleasePlan,
    SecureAggregationPlan, SignedManifest, StrategyRecord, TaskManifest, ThresholdRule,
};
use medfed_protocol::schema::Schema;

use crate::config::CoordinatorConfig;
use crate::strategy::StrategyConfig;
use crate::task_model::{TaskModelError, task_model};

/// The file the signed manifest is written to, in the coordinator's data folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest of the task `config` describes, over `schema` and the consortium's `members`.
pub fn task_manifest(
    config: &CoordinatorConfig,
    schema: &Schema,
    members: &MemberList,
) -> Result<TaskManifest, ManifestBuildError> {
    let task = &config.task;
    let model = task_model(&task.model, schema.num_features(), task.seed)?.spec;
    let params = model.layout().len();
    let secure = &config.secure_aggregation;
    // Quantised uploads must leave a round of every member (the most a round can have) at
    // least one level bit.
    if secure.enabled
        && let Err(e) = config
            .secure_aggregation
            .plan()
            .check_quantization(members.names().count())
    {
        return Err(ManifestError::Invalid(format!("secure_aggregation.{e}")).into());
    }
    Ok(TaskManifest {
        format: MANIFEST_FORMAT.to_owned(),
        schema_digest: Digest32(schema.digest()),
        members_digest: Digest32(members.digest()),
        model,
        rounds: task.rounds,
        min_nodes: task.min_nodes as u64,
        training: task.training_rule(),
        strategy: strategy_record(&config.strategy),
        secure_aggregation: secure.enabled.then(|| SecureAggregationPlan {
            neighbours: secure.neighbours.map(|k| k as u64),
            // Distributed DP fixes the threshold at its t unless the configuration sets one
            // (the manifest's validation refuses two that differ).
            threshold: secure
                .threshold
                .or_else(|| task.distributed_dp.as_ref().map(|d| d.threshold))
                .map_or(ThresholdRule::TwoThirdsPlusOne, |t| {
                    ThresholdRule::Fixed(t as u64)
                }),
            update_clip: secure.update_clip,
            fractional_bits: secure
                .fractional_bits
                .map_or(FractionalBitsRule::Fit, FractionalBitsRule::Fixed),
            upload_bits: secure.upload_bits,
        }),
        releases: {
            let mut site_figures = config.task.site_figures.clone();
            site_figures.sort();
            site_figures.dedup();
            let releases = ReleasePlan {
                site_figures,
                evaluate_every: config.task.evaluate_every,
                decision_threshold: config.task.decision_threshold,
                ..ReleasePlan::for_task(
                    schema.stats_len(),
                    schema.audit_groups().len(),
                    params,
                    config.task.score_bins,
                )
            };
            if task.distributed_dp.is_some() {
                releases.distributed()
            } else {
                releases
            }
        },
        distributed_dp: task.distributed_dp.as_ref().map(|d| d.plan()),
    })
}

/// The strategy's name and hyper-parameters, for the record.
fn strategy_record(strategy: &StrategyConfig) -> StrategyRecord {
    let (name, values): (&str, Vec<(&str, f64)>) = match *strategy {
        StrategyConfig::FedAvg {
            server_learning_rate,
        } => (
            "fed_avg",
            vec![("server_learning_rate", server_learning_rate)],
        ),
        StrategyConfig::FedAdam {
            server_learning_rate,
            beta1,
            beta2,
            tau,
        } => (
            "fed_adam",
            vec![
                ("server_learning_rate", server_learning_rate),
                ("beta1", beta1),
                ("beta2", beta2),
                ("tau", tau),
            ],
        ),
        StrategyConfig::FedYogi {
            server_learning_rate,
            beta1,
            beta2,
            tau,
        } => (
            "fed_yogi",
            vec![
                ("server_learning_rate", server_learning_rate),
                ("beta1", beta1),
                ("beta2", beta2),
                ("tau", tau),
            ],
        ),
    };
    StrategyRecord {
        name: name.to_owned(),
        hyper_parameters: values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

/// Reads the schema and member list `config` names, builds the manifest and signs it with the
/// coordinator's report key (the key of its certificate).
pub fn signed_manifest(
    config: &CoordinatorConfig,
    schema: &Schema,
) -> Result<SignedManifest, ManifestBuildError> {
    let members = MemberList::load(&config.members)?;
    let key = load_report_signing_key(&config.tls.key)?;
    Ok(task_manifest(config, schema, &members)?.sign(&key)?)
}

/// Writes the signed manifest as `manifest.json` in `data_dir`; returns the file.
pub fn write_manifest(
    data_dir: &Path,
    manifest: &SignedManifest,
) -> Result<PathBuf, ManifestBuildError> {
    let path = data_dir.join(MANIFEST_FILE);
    medfed_certs::replace_file(&path, manifest.to_json().as_bytes()).map_err(|source| {
        ManifestBuildError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// Why the manifest could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestBuildError {
    /// The member list cannot be read.
    #[error(transparent)]
    Members(#[from] medfed_certs::MemberListError),
    /// The coordinator's key cannot sign.
    #[error("the coordinator's key cannot sign the manifest: {0}")]
    Key(#[from] medfed_certs::CertError),
    /// The model configuration is not usable.
    #[error(transparent)]
    Model(#[from] TaskModelError),
    /// The manifest is not valid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The file cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use medfed_protocol::distributed_dp::{DEFAULT_ROUNDING_BETA, DEFAULT_SCALED_CLIP};
    use medfed_protocol::manifest::{DistributedDpPlan, PrivacyMode};

    use super::*;

    const SCHEMA: &str = medfed_protocol::schema::EXAMPLE_SCHEMA;

    const CONFIG: &str = r#"
listen = "127.0.0.1:7400"
data_dir = "state"
schema = "schema.toml"
members = "members.toml"
[tls]
ca_cert = "ca.pem"
cert = "coordinator.pem"
key = "coordinator.key"
[task]
model = { kind = "mlp", hidden = [4] }
rounds = 5
min_nodes = 3
[task.distributed_dp]
sample_rate = 0.05
noise_multiplier = 1.2
clip_norm = 0.5
threshold = 3
max_nodes = 4
"#;

    fn members() -> MemberList {
        MemberList::parse(
            "[[member]]\nname = \"a\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000001\"\n",
        )
        .unwrap()
    }

    fn manifest(extra: &str) -> Result<TaskManifest, ManifestBuildError> {
        let config =
            CoordinatorConfig::parse(&format!("{CONFIG}{extra}"), Path::new("/site")).unwrap();
        task_manifest(&config, &Schema::parse(SCHEMA).unwrap(), &members())
    }

    #[test]
    fn quantised_uploads_go_into_the_manifest_and_a_member_list_without_a_level_bit_is_refused() {
        let text = CONFIG
            .replace("min_nodes = 3\n", "min_nodes = 2\n")
            .split("[task.distributed_dp]")
            .next()
            .unwrap()
            .to_owned()
            + "[secure_aggregation]\nupload_bits = 2\n";
        let config = CoordinatorConfig::parse(&text, Path::new("/site")).unwrap();
        let schema = Schema::parse(SCHEMA).unwrap();
        // 2-bit lanes: a round of the one member, or of two, has a level bit.
        let m = task_manifest(&config, &schema, &members()).unwrap();
        assert_eq!(m.secure_aggregation.unwrap().upload_bits, Some(2));
        // Four members could meet in one round, which would have none.
        let four = MemberList::parse(
            &(1..=4)
                .map(|i| format!("[[member]]\nname = \"h{i}\"\nkey_sha256 = \"{i:064x}\"\n"))
                .collect::<String>(),
        )
        .unwrap();
        let error = task_manifest(&config, &schema, &four)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("upload_bits = 2 leaves a round of 4 hospitals no level bit"),
            "{error}"
        );
    }

    #[test]
    fn the_site_figure_hospitals_go_into_the_manifest_sorted_and_once() {
        assert!(manifest("").unwrap().releases.site_figures.is_empty());
        let text = CONFIG.replace(
            "min_nodes = 3\n",
            "min_nodes = 3\nsite_figures = [\"hospital-c\", \"hospital-a\", \"hospital-c\"]\n",
        );
        let config = CoordinatorConfig::parse(&text, Path::new("/site")).unwrap();
        let m = task_manifest(&config, &Schema::parse(SCHEMA).unwrap(), &members()).unwrap();
        assert_eq!(m.releases.site_figures, ["hospital-a", "hospital-c"]);
        m.validate().unwrap();
    }

    #[test]
    fn the_task_s_distributed_dp_becomes_the_manifest_s_with_its_threshold_fixed() {
        let m = manifest("").unwrap();
        assert_eq!(m.privacy_mode(), PrivacyMode::Distributed);
        assert_eq!(
            m.distributed_dp,
            Some(DistributedDpPlan {
                sample_rate: 0.05,
                noise_multiplier: 1.2,
                clip_norm: 0.5,
                scale: DEFAULT_SCALED_CLIP / 0.5,
                rounding_beta: DEFAULT_ROUNDING_BETA,
                threshold: 3,
                max_nodes: 4,
            })
        );
        let secure = m.secure_aggregation.as_ref().unwrap();
        assert_eq!(secure.threshold, ThresholdRule::Fixed(3));
        // The update block is the model's words, no weight.
        assert_eq!(m.releases.update_figures, m.model.layout().len() as u64);
        m.validate().unwrap();
    }

    #[test]
    fn a_distributed_task_the_manifest_cannot_carry_is_refused_before_it_is_signed() {
        // Another secure-aggregation threshold than t, or neighbours, or no noise.
        for (extra, needle) in [
            ("[secure_aggregation]\nthreshold = 2\n", "threshold"),
            ("[secure_aggregation]\nneighbours = 2\n", "complete graph"),
            (
                "[secure_aggregation]\nenabled = false\n",
                "needs secure aggregation",
            ),
        ] {
            let m = manifest(extra).unwrap();
            let error = m.validate().unwrap_err().to_string();
            assert!(error.contains(needle), "{extra}: {error}");
        }
        let silent = CONFIG.replace("noise_multiplier = 1.2", "noise_multiplier = 0.0");
        let config = CoordinatorConfig::parse(&silent, Path::new("/site")).unwrap();
        let m = task_manifest(&config, &Schema::parse(SCHEMA).unwrap(), &members()).unwrap();
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("noise multiplier")
        );
    }
}
