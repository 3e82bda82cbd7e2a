//! The hospital's check of a task manifest before it joins: the plan the coordinator signed must
//! fit the hospital's policy, its schema and its pinned member list, or the node does not join.
//!
//! What the manifest costs in ε is checked by [`crate::Hospital::approve_manifest`], which holds
//! the privacy ledger; this module checks everything else.

use medfed_certs::MemberList;
use medfed_protocol::manifest::{
    Digest32, ManifestError, PrivacyMode, ReleasePlan, TaskManifest, ThresholdRule,
};
use medfed_protocol::model::{ModelError, ModelKind};
use medfed_protocol::schema::Schema;

use crate::policy::{Fraction, NodePolicy};

/// The most rounds a [`PrivacyForecast`] lists one by one; beyond, it lists the first and the
/// last.
pub const LISTED_ROUNDS: u64 = 1000;

/// A manifest the hospital approved: its digest, and what it would cost in ε.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestApproval {
    /// The manifest's digest (SHA-256 of its canonical encoding).
    pub digest: Digest32,
    /// Its privacy cost; `None` when the hospital does not train privately.
    pub forecast: Option<PrivacyForecast>,
}

/// What a task would cost a hospital in ε, on top of what its ledger already holds.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyForecast {
    /// The hospital's budget.
    pub target_epsilon: f64,
    /// The δ it is accounted at.
    pub delta: f64,
    /// ε spent before the task.
    pub spent: f64,
    /// ε spent once the task's noised statistics count; `None` when they leave exact.
    pub statistics: Option<f64>,
    /// DP-SGD's noise multiplier in the task's training rounds.
    pub noise_multiplier: Option<f64>,
    /// ε after each listed round, in order (the final evaluation last, when planned).
    pub rounds: Vec<RoundCost>,
    /// In a distributed task, the local figures: what this hospital's noise share alone
    /// guarantees (against the other hospitals colluding with the coordinator), composed with
    /// every other release unchanged; `rounds` above is then the central guarantee.
    pub local: Option<LocalForecast>,
}

/// The local side of a distributed task's forecast (see [`PrivacyForecast::local`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalForecast {
    /// The hospital's cap on its local ε (`[privacy] max_local_epsilon`), if any.
    pub max_local_epsilon: Option<f64>,
    /// Local ε spent before the task.
    pub spent: f64,
    /// Local ε after each listed round, as [`PrivacyForecast::rounds`].
    pub rounds: Vec<RoundCost>,
}

impl LocalForecast {
    /// Local ε after the whole task.
    pub fn total(&self) -> f64 {
        self.rounds.last().map_or(self.spent, |r| r.epsilon_after)
    }
}

impl PrivacyForecast {
    /// ε after the whole task.
    pub fn total(&self) -> f64 {
        self.rounds.last().map_or_else(
            || self.statistics.unwrap_or(self.spent),
            |r| r.epsilon_after,
        )
    }
}

/// ε after one round of a task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundCost {
    /// The round (the final evaluation's is `rounds + 1`).
    pub round: u64,
    /// Whether it trains (false: the final evaluation).
    pub train: bool,
    /// ε spent once it counts, every earlier round of the task included.
    pub epsilon_after: f64,
}

/// The most share holders a round can have when neither the neighbour count nor a pinned member
/// list bounds them (a round's participants are indexed by `u16`).
const MAX_HOLDERS: usize = u16::MAX as usize;

/// Why a node refuses to join under a manifest.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestRefusal {
    /// The task's model is a TorchScript module the hospital did not approve.
    #[error(
        "the task's TorchScript module (SHA-256 {sha256}) is not one the hospital approved (policy.approved_modules)"
    )]
    ModuleNotApproved {
        /// The module the manifest names.
        sha256: Digest32,
    },
    /// The coordinator's report key cannot be taken from the certificate it presented.
    #[error("the coordinator's certificate gives no key to check the manifest with: {0}")]
    CoordinatorKey(String),
    /// The manifest is not valid or its signature is not the coordinator's.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest's model is not a valid one.
    #[error("the manifest's model is not valid: {0}")]
    Model(String),
    /// Secure aggregation is off, and the hospital requires it.
    #[error("the manifest turns secure aggregation off; the hospital requires it")]
    PlaintextPlanned,
    /// The manifest's threshold rule falls to or below the hospital's floor for some holder
    /// count the task's rounds can have.
    #[error(
        "the manifest's threshold {rule:?} gives {threshold} of {holders} share holders, not above the hospital's floor {floor}"
    )]
    ThresholdBelowFloor {
        /// The manifest's rule.
        rule: ThresholdRule,
        /// The threshold it gives.
        threshold: usize,
        /// For this many holders.
        holders: usize,
        /// The hospital's floor.
        floor: Fraction,
    },
    /// The manifest's minimum leaves room for sums with fewer other hospitals than the hospital
    /// requires.
    #[error(
        "the manifest's min_nodes {min_nodes} allows sums with {} other hospitals; the hospital requires {required}",
        min_nodes.saturating_sub(1)
    )]
    TooFewOtherHospitals {
        /// The manifest's minimum participants.
        min_nodes: u64,
        /// The hospital's minimum other hospitals.
        required: usize,
    },
    /// The manifest names another schema.
    #[error("the manifest's schema digest {manifest} is not this hospital's {ours}")]
    SchemaMismatch {
        /// In the manifest.
        manifest: Digest32,
        /// The hospital's.
        ours: Digest32,
    },
    /// The manifest names another member list than the one the hospital pins.
    #[error("the manifest's member list digest {manifest} is not the pinned list's {ours}")]
    MembersMismatch {
        /// In the manifest.
        manifest: Digest32,
        /// The pinned list's.
        ours: Digest32,
    },
    /// The releases the manifest states are not what this schema and model give.
    #[error(
        "the manifest's releases {manifest:?} are not what the schema and model give ({ours:?})"
    )]
    ReleasesMismatch {
        /// In the manifest.
        manifest: Box<ReleasePlan>,
        /// From the schema and the model.
        ours: Box<ReleasePlan>,
    },
    /// Not even the first round fits the hospital's remaining privacy budget.
    #[error(
        "not even one round fits the privacy budget: the first would bring ε to {first_round_epsilon:.4}, the budget is {target_epsilon}"
    )]
    BudgetTooSmall {
        /// ε after the first planned round.
        first_round_epsilon: f64,
        /// The hospital's budget.
        target_epsilon: f64,
    },
    /// The task's privacy mode is not the hospital's (`[privacy] mode`; local without a
    /// `[privacy]` section).
    #[error("the task's privacy mode is {task}; the hospital's is {node}")]
    PrivacyMode {
        /// The hospital's.
        node: PrivacyMode,
        /// The task's.
        task: PrivacyMode,
    },
    /// Not even the first round of a distributed task fits the hospital's cap on its local ε.
    #[error(
        "not even one round fits the local privacy cap: the first would bring the local ε to {first_round_local_epsilon:.4}, the cap (max_local_epsilon) is {max_local_epsilon}"
    )]
    LocalBudgetTooSmall {
        /// Local ε after the first planned round.
        first_round_local_epsilon: f64,
        /// The hospital's cap.
        max_local_epsilon: f64,
    },
    /// The privacy cost of the plan cannot be computed.
    #[error("the privacy cost of the manifest cannot be computed (see the node's log)")]
    PrivacyUnpriced,
}

/// Checks `manifest` against the hospital's `policy`, its `schema` and its pinned `members`.
pub fn check_manifest(
    manifest: &TaskManifest,
    policy: &NodePolicy,
    members: Option<&MemberList>,
    schema: &Schema,
) -> Result<(), ManifestRefusal> {
    manifest.validate()?;
    let ours = Digest32(schema.digest());
    if manifest.schema_digest != ours {
        return Err(ManifestRefusal::SchemaMismatch {
            manifest: manifest.schema_digest,
            ours,
        });
    }
    if let Some(members) = members {
        let ours = Digest32(members.digest());
        if manifest.members_digest != ours {
            return Err(ManifestRefusal::MembersMismatch {
                manifest: manifest.members_digest,
                ours,
            });
        }
    }
    manifest
        .model
        .validate()
        .map_err(|e: ModelError| ManifestRefusal::Model(e.to_string()))?;
    if let ModelKind::TorchScript(module) = &manifest.model.kind
        && policy.approved_modules.find(&module.sha256).is_none()
    {
        return Err(ManifestRefusal::ModuleNotApproved {
            sha256: module.sha256,
        });
    }
    // The schedule, the histograms' bins and the decision threshold are the consortium's
    // choice (the schedule's cost is in the forecast; the bins were checked with the manifest;
    // the threshold only moves counts between cells of the same confusion matrix; the
    // hospitals that reveal their site figure are counted out of every evaluation sum by the
    // node's guard); the figures follow from the schema, the model and the bins.
    let mut expected = ReleasePlan {
        site_figures: manifest.releases.site_figures.clone(),
        final_evaluation: manifest.releases.final_evaluation,
        evaluate_every: manifest.releases.evaluate_every,
        decision_threshold: manifest.releases.decision_threshold,
        ..ReleasePlan::for_task(
            schema.stats_len(),
            schema.audit_groups().len(),
            manifest.model.layout().len(),
            manifest.releases.score_bins,
        )
    };
    if manifest.distributed_dp.is_some() {
        expected = expected.distributed();
    }
    if manifest.releases != expected || manifest.model.input_dim != schema.num_features() {
        return Err(ManifestRefusal::ReleasesMismatch {
            manifest: Box::new(manifest.releases.clone()),
            ours: Box::new(expected),
        });
    }
    let others = usize::try_from(manifest.min_nodes.saturating_sub(1)).unwrap_or(usize::MAX);
    if others < policy.min_other_hospitals {
        return Err(ManifestRefusal::TooFewOtherHospitals {
            min_nodes: manifest.min_nodes,
            required: policy.min_other_hospitals,
        });
    }
    let Some(secure) = &manifest.secure_aggregation else {
        return if policy.require_secure_aggregation {
            Err(ManifestRefusal::PlaintextPlanned)
        } else {
            Ok(())
        };
    };
    // Every holder count a round can have: at least min(k + 1, min_nodes), at most k + 1, the
    // pinned members' number and distributed DP's `max_nodes` (a round with more participants
    // departs from the manifest).
    let min_nodes = usize::try_from(manifest.min_nodes).unwrap_or(usize::MAX);
    let most = secure
        .neighbours()
        .map_or(MAX_HOLDERS, |k| k.saturating_add(1))
        .min(members.map_or(MAX_HOLDERS, |m| m.names().count()))
        .min(manifest.distributed_dp.map_or(MAX_HOLDERS, |d| {
            usize::try_from(d.max_nodes).unwrap_or(MAX_HOLDERS)
        }))
        .min(MAX_HOLDERS);
    let fewest = min_nodes.min(most).max(2);
    for holders in fewest..=most {
        let threshold = secure.threshold.threshold(holders);
        if !policy.threshold_floor.is_exceeded_by(threshold, holders) {
            return Err(ManifestRefusal::ThresholdBelowFloor {
                rule: secure.threshold,
                threshold,
                holders,
                floor: policy.threshold_floor,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use medfed_protocol::evaluation::ScoreBins;
    use medfed_protocol::manifest::{
        FractionalBitsRule, MANIFEST_FORMAT, SecureAggregationPlan, StrategyRecord, TrainingRule,
    };
    use medfed_protocol::model::{ModelKind, ModelSpec};

    use super::*;

    const SCHEMA: &str = medfed_protocol::schema::EXAMPLE_SCHEMA;

    fn members() -> MemberList {
        MemberList::parse(
            r#"
[[member]]
name = "a"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
[[member]]
name = "b"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000002"
[[member]]
name = "c"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000003"
[[member]]
name = "d"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000004"
"#,
        )
        .unwrap()
    }

    fn manifest(schema: &Schema) -> TaskManifest {
        let model = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![4] },
            input_dim: schema.num_features(),
        };
        TaskManifest {
            format: MANIFEST_FORMAT.into(),
            schema_digest: Digest32(schema.digest()),
            members_digest: Digest32(members().digest()),
            releases: ReleasePlan::for_task(
                schema.stats_len(),
                schema.audit_groups().len(),
                model.layout().len(),
                ScoreBins::FINE,
            ),
            model,
            rounds: 5,
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
                hyper_parameters: BTreeMap::new(),
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

    fn check(change: impl Fn(&mut TaskManifest, &mut NodePolicy)) -> Result<(), ManifestRefusal> {
        let schema = Schema::parse(SCHEMA).unwrap();
        let mut m = manifest(&schema);
        let mut policy = NodePolicy::default();
        change(&mut m, &mut policy);
        check_manifest(&m, &policy, Some(&members()), &schema)
    }

    #[test]
    fn the_default_plan_passes_the_default_policy() {
        assert_eq!(check(|_, _| {}), Ok(()));
    }

    #[test]
    fn a_plan_naming_site_figure_hospitals_is_the_consortiums_choice() {
        // Who reveals is approved with the manifest; the node's guard counts them out of each
        // evaluation sum at request time, whatever its own policy.
        assert_eq!(
            check(|m, _| m.releases.site_figures = vec!["a".into(), "b".into()]),
            Ok(())
        );
        // An unsorted list is not a valid manifest.
        assert!(matches!(
            check(|m, _| m.releases.site_figures = vec!["b".into(), "a".into()]),
            Err(ManifestRefusal::Manifest(_))
        ));
    }

    #[test]
    fn a_plan_against_the_policy_is_refused() {
        assert_eq!(
            check(|m, _| m.secure_aggregation = None),
            Err(ManifestRefusal::PlaintextPlanned)
        );
        // Plaintext is fine for a hospital that allows it.
        assert_eq!(
            check(|m, p| {
                m.secure_aggregation = None;
                p.require_secure_aggregation = false;
            }),
            Ok(())
        );
        assert!(matches!(
            check(|m, _| m.min_nodes = 2),
            Err(ManifestRefusal::TooFewOtherHospitals {
                min_nodes: 2,
                required: 2
            })
        ));
        // A fixed threshold of 2 fails the 2/3 floor at 3 holders.
        assert!(matches!(
            check(|m, _| m.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(2)),
            Err(ManifestRefusal::ThresholdBelowFloor { holders: 3, .. })
        ));
        // A fixed threshold of 3 passes for 3 or 4 holders (four pinned members)...
        assert_eq!(
            check(|m, _| m.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(3)),
            Ok(())
        );
        // ...but not without a member list bounding the holders.
        let schema = Schema::parse(SCHEMA).unwrap();
        let mut fixed = manifest(&schema);
        fixed.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(3);
        assert!(matches!(
            check_manifest(&fixed, &NodePolicy::default(), None, &schema),
            Err(ManifestRefusal::ThresholdBelowFloor { holders: 5, .. })
        ));
    }

    #[test]
    fn a_plan_for_another_consortium_or_task_is_refused() {
        assert!(matches!(
            check(|m, _| m.schema_digest.0[0] ^= 1),
            Err(ManifestRefusal::SchemaMismatch { .. })
        ));
        assert!(matches!(
            check(|m, _| m.members_digest.0[0] ^= 1),
            Err(ManifestRefusal::MembersMismatch { .. })
        ));
        assert!(matches!(
            check(|m, _| m.releases.update_figures += 1),
            Err(ManifestRefusal::ReleasesMismatch { .. })
        ));
        assert!(matches!(
            check(|m, _| m.model.input_dim += 1),
            Err(ManifestRefusal::ReleasesMismatch { .. })
        ));
        assert!(matches!(
            check(|m, _| m.training.learning_rate = f64::INFINITY),
            Err(ManifestRefusal::Manifest(ManifestError::Invalid(_)))
        ));
    }

    /// The test manifest under distributed DP with threshold `t` of at most `max_nodes`.
    fn distributed(m: &mut TaskManifest, t: u64, max_nodes: u64) {
        use medfed_protocol::manifest::DistributedDpPlan;
        m.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(t);
        m.releases = m.releases.clone().distributed();
        m.distributed_dp = Some(DistributedDpPlan {
            sample_rate: 0.1,
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            scale: 16384.0,
            rounding_beta: 1.0 / 1_048_576.0,
            threshold: t,
            max_nodes,
        });
    }

    #[test]
    fn a_distributed_plan_is_held_to_the_threshold_floor_over_its_own_node_bound() {
        // t = 3 of at most 4: above 2/3 of 3 and of 4 holders.
        assert_eq!(check(|m, _| distributed(m, 3, 4)), Ok(()));
        // t = 2 is at the floor for 3 holders: refused, as any threshold below the floor.
        assert!(matches!(
            check(|m, _| distributed(m, 2, 4)),
            Err(ManifestRefusal::ThresholdBelowFloor {
                threshold: 2,
                holders: 3,
                ..
            })
        ));
        // Without a member list, distributed DP's max_nodes bounds the holders on its own.
        let schema = Schema::parse(SCHEMA).unwrap();
        let mut m = manifest(&schema);
        distributed(&mut m, 3, 4);
        assert_eq!(
            check_manifest(&m, &NodePolicy::default(), None, &schema),
            Ok(())
        );
        // The update block is the model's words without a weight: a plan counting the weight
        // does not match.
        assert!(matches!(
            check(|m, _| {
                distributed(m, 3, 4);
                m.releases.update_figures += 1;
            }),
            Err(ManifestRefusal::ReleasesMismatch { .. })
        ));
    }
}
