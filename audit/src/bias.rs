//! The per-round bias audit: the consortium's pooled per-group counts — sums over hospitals,
//! never one hospital's figures — turned into per-group metrics, disparities and the verdict of
//! the consortium's fairness policy, one report per audited attribute: each sensitive attribute,
//! then each intersection of two (`sex×age`, see [`Schema::audit_attributes`]), all under the
//! same policy and suppression threshold.

use std::collections::BTreeMap;

use medfed_protocol::evaluation::DecisionThreshold;
use medfed_protocol::fairness::{AuditConfig, FairnessPolicy, FairnessReport, GroupCounts};
use medfed_protocol::report::AttributeFairness;
use medfed_protocol::schema::Schema;
use serde::Deserialize;
use tracing::{info, warn};

/// The coordinator's `[fairness]` settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairnessSettings {
    /// Groups with fewer held-out examples are suppressed (default 10).
    #[serde(default)]
    pub min_count: Option<u64>,
    /// The consortium's policy; a model that fails any check is not approved.
    #[serde(default)]
    pub policy: FairnessPolicy,
}

/// The audit of one sensitive attribute: the report format's own type.
pub type AttributeAudit = AttributeFairness;

/// Audits the pooled per-group counts (in the schema's audit-group order), which the nodes
/// took at `decision_threshold` (recorded in each report, and named where nobody was flagged).
///
/// A node may add integer noise to its counts (its `[privacy] evaluation_noise`), so a pooled
/// cell can be negative; each is taken as `max(0, count)` ([`GroupCounts::clamped`]) before
/// the metrics, the suppression threshold and the disparities.
///
/// The caller audits only a round with evaluation data: with a pooled held-out count of zero
/// every group would be suppressed and every limit fail, which is no verdict on the model (the
/// report is then [`NotEvaluated`](medfed_protocol::report::NotEvaluated)).
pub fn audit(
    schema: &Schema,
    counts: &[GroupCounts],
    settings: &FairnessSettings,
    decision_threshold: DecisionThreshold,
) -> Vec<AttributeAudit> {
    // Each attribute's groups in the schema's order (levels as listed, bands from low to high).
    let mut by_attribute: BTreeMap<&str, Vec<(String, GroupCounts)>> = BTreeMap::new();
    let groups = schema.audit_groups();
    for (group, counts) in groups.iter().zip(counts) {
        by_attribute
            .entry(group.attribute.as_str())
            .or_default()
            .push((group.group.clone(), counts.clamped()));
    }
    let mut config = AuditConfig::default();
    // The report records it as `f32`, the scores' precision.
    config.decision_threshold(decision_threshold.get() as f32);
    if let Some(min_count) = settings.min_count {
        config.min_count(min_count);
    }
    let mut audits = Vec::new();
    for attribute in schema.audit_attributes() {
        let Some(groups) = by_attribute.remove(attribute.as_str()) else {
            continue;
        };
        match FairnessReport::compute(groups.iter().map(|(name, counts)| (name, counts)), &config) {
            Ok(report) => {
                let policy = settings.policy.check(&report);
                audits.push(AttributeAudit {
                    attribute,
                    report,
                    policy,
                });
            }
            Err(e) => warn!(%attribute, error = %e, "fairness audit failed"),
        }
    }
    audits
}

/// Logs one line per attribute (the disparities and the verdict), then one line per policy
/// check that failed on an undefined value, saying why in words.
pub fn log(audits: &[AttributeAudit]) {
    for audit in audits {
        let d = audit.report.disparities.as_ref();
        info!(
            attribute = %audit.attribute,
            demographic_parity_difference = d.map(|d| d.demographic_parity_difference),
            demographic_parity_ratio = d.and_then(|d| d.demographic_parity_ratio),
            equalized_odds_difference = d.and_then(|d| d.equalized_odds_difference),
            approved = audit.policy.approved,
            "fairness audit of the pooled held-out data"
        );
        for check in &audit.policy.checks {
            if let Some(reason) = &check.undefined {
                warn!(
                    attribute = %audit.attribute,
                    check = %check.name,
                    "fairness check failed: the value is undefined because {reason}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use medfed_protocol::fairness::GroupReport;

    use super::*;

    const SCHEMA: &str = r#"
sensitive = ["sex", "age"]
intersections = [["sex", "age"]]
[label]
column = "y"
positive = ["1"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
range = [0, 120]
[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
[bands]
age = [50]
"#;

    #[test]
    fn intersections_are_audited_under_the_same_policy_and_negative_counts_read_as_zero() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let groups = schema.audit_groups();
        assert_eq!(groups.len(), 2 + 2 + 4);
        // Every group: 30 patients, half positive; half of each class predicted positive.
        let scores: Vec<f32> = (0..30)
            .map(|i| if i % 2 == 0 { 0.9 } else { 0.1 })
            .collect();
        let labels: Vec<f32> = (0..30).map(|i| f32::from(u8::from(i < 15))).collect();
        let mut counts = vec![GroupCounts::from_predictions(&scores, &labels); groups.len()];
        // Noise took one pooled cell below zero: it counts as 0, not as an invalid report.
        counts[0].fp = -2.0;
        counts[0].negative_scores[3] = -1.0;
        // Small enough that F, left with 8 negatives, is still reported.
        let settings = FairnessSettings {
            min_count: Some(5),
            policy: FairnessPolicy {
                max_demographic_parity_difference: Some(0.5),
                ..FairnessPolicy::default()
            },
        };
        let audits = audit(
            &schema,
            &counts,
            &settings,
            DecisionThreshold::new(0.4).unwrap(),
        );
        assert!(audits.iter().all(|a| a.report.decision_threshold == 0.4));
        let names: Vec<&str> = audits.iter().map(|a| a.attribute.as_str()).collect();
        assert_eq!(names, ["sex", "age", "sex×age"]);
        let crossed = &audits[2];
        assert_eq!(
            group_names(crossed),
            ["F, <50", "F, ≥50", "M, <50", "M, ≥50"]
        );
        assert_eq!(crossed.policy.checks.len(), 1);
        let GroupReport::Reported { metrics, .. } = &audits[0].report.groups[0] else {
            panic!("F is reported");
        };
        // 8 TP, 8 TN, 7 FN, and the 7 FP noised to −2 read as 0: 23 patients.
        assert_eq!(metrics.n, 23);
    }

    #[test]
    fn groups_are_reported_in_the_schema_order_not_by_name() {
        let schema = Schema::parse(&SCHEMA.replace("age = [50]", "age = [45, 55, 65]")).unwrap();
        let scores = [0.9f32, 0.1];
        let labels = [1.0f32, 0.0];
        let counts =
            vec![GroupCounts::from_predictions(&scores, &labels); schema.audit_groups().len()];
        let audits = audit(
            &schema,
            &counts,
            &FairnessSettings::default(),
            DecisionThreshold::DEFAULT,
        );
        let age = audits.iter().find(|a| a.attribute == "age").unwrap();
        // By name this would be `45-<55, 55-<65, <45, ≥65`.
        assert_eq!(group_names(age), ["<45", "45-<55", "55-<65", "≥65"]);
    }

    #[test]
    fn an_audit_only_attribute_is_audited_like_any_other() {
        let text = SCHEMA
            .replace(
                "sensitive = [\"sex\", \"age\"]",
                "sensitive = [\"race\", \"sex\"]",
            )
            .replace("[bands]\nage = [50]\n", "")
            .replace("[[\"sex\", \"age\"]]", "[[\"race\", \"sex\"]]")
            + "[[columns]]\nname = \"race\"\ntype = \"categorical\"\nlevels = [\"B\", \"W\"]\n\
               input = false\n";
        let schema = Schema::parse(&text).unwrap();
        // Age and sex are the model's inputs; race is not.
        assert_eq!(schema.num_features(), 3);
        let scores: Vec<f32> = (0..30)
            .map(|i| if i % 2 == 0 { 0.9 } else { 0.1 })
            .collect();
        let labels: Vec<f32> = (0..30).map(|i| f32::from(u8::from(i < 15))).collect();
        let counts =
            vec![GroupCounts::from_predictions(&scores, &labels); schema.audit_groups().len()];
        let audits = audit(
            &schema,
            &counts,
            &FairnessSettings::default(),
            DecisionThreshold::DEFAULT,
        );
        let names: Vec<&str> = audits.iter().map(|a| a.attribute.as_str()).collect();
        assert_eq!(names, ["race", "sex", "race×sex"]);
        assert_eq!(group_names(&audits[0]), ["B", "W"]);
        assert!(audits[0].report.disparities.is_some());
    }

    /// The groups of an attribute's report, in the order reported.
    fn group_names(audit: &AttributeAudit) -> Vec<&str> {
        audit
            .report
            .groups
            .iter()
            .map(|g| match g {
                GroupReport::Reported { group, .. } | GroupReport::Suppressed { group, .. } => {
                    group.as_str()
                }
            })
            .collect()
    }
}
