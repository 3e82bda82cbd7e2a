//! The per-round bias audit: the consortium's pooled per-group counts — sums over hospitals,
//! never one hospital's figures — turned into per-group metrics, disparities and the verdict of
//! the consortium's fairness policy, one report per sensitive attribute.

use std::collections::BTreeMap;

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

/// Audits the pooled per-group counts (in the schema's audit-group order).
pub fn audit(
    schema: &Schema,
    counts: &[GroupCounts],
    settings: &FairnessSettings,
) -> Vec<AttributeAudit> {
    let mut by_attribute: BTreeMap<&str, BTreeMap<String, GroupCounts>> = BTreeMap::new();
    let groups = schema.audit_groups();
    for (group, counts) in groups.iter().zip(counts) {
        by_attribute
            .entry(group.attribute.as_str())
            .or_default()
            .insert(group.group.clone(), counts.clone());
    }
    let mut config = AuditConfig::default();
    if let Some(min_count) = settings.min_count {
        config.min_count(min_count);
    }
    let mut audits = Vec::new();
    for attribute in schema.sensitive() {
        let Some(groups) = by_attribute.remove(attribute.as_str()) else {
            continue;
        };
        match FairnessReport::compute(&groups, &config) {
            Ok(report) => {
                let policy = settings.policy.check(&report);
                audits.push(AttributeAudit {
                    attribute: attribute.clone(),
                    report,
                    policy,
                });
            }
            Err(e) => warn!(%attribute, error = %e, "fairness audit failed"),
        }
    }
    audits
}

/// Logs one line per attribute: the disparities and the verdict.
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
    }
}
