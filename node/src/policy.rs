//! The hospital's own policy: what the node agrees to release, whatever the coordinator asks.
//!
//! The coordinator proposes; the node decides. Every request is checked here before anything is
//! computed, and every answer that would release figures is checked again just before it
//! leaves. A request that breaks the policy is declined with a typed [`PolicyViolation`].
//!
//! ```toml
//! [policy]
//! members = "members.toml"           # the consortium's pinned member list (medfed-certs members)
//! require_secure_aggregation = true  # never send a figure in the clear
//! min_other_hospitals = 2            # every sum holds at least this many other hospitals
//! threshold_floor = "2/3"            # secure aggregation's threshold t must exceed 2/3 of holders
//! max_attempts_per_round = 3         # releases per round (a restarted round is a new attempt)
//! max_retries_per_task = 10          # releases beyond the first of each round, in all
//! release_site_figures = "no"        # "noised" | "exact": this site's own final figure
//! approved_modules = ["risk.pt"]     # TorchScript modules the hospital reviewed (by file)
//! ```
//!
//! `approved_modules` names the only TorchScript modules the node runs: each file is hashed
//! when the configuration is read, and a task whose manifest names any other module's SHA-256
//! is refused before anything is computed.
//!
//! `release_site_figures` opts the hospital into external validation per site: after the final
//! evaluation, and only when the signed task manifest also lists it, it releases the very
//! evaluation vector it put into that evaluation's sum. `"noised"` needs the evaluation noise
//! on (`[privacy.evaluation]`); `"exact"` is the explicit choice to release exact counts.

use std::collections::HashMap;
use std::path::PathBuf;

use medfed_certs::MemberList;
use medfed_protocol::messages::PolicyViolation;
use medfed_protocol::secagg::{PeerVerifier, RoundParams};
use serde::Deserialize;

use crate::modules::ApprovedModules;

/// The hospital's policy, as configured (`[policy]` in `node.toml`).
#[derive(Clone, Debug, PartialEq)]
pub struct NodePolicy {
    /// The consortium's member list; `None` only when the hospital chose to trust every
    /// certificate of the consortium CA (`trust_ca_for_membership = true`).
    pub members: Option<PathBuf>,
    /// Refuse every request that would send figures in the clear.
    pub require_secure_aggregation: bool,
    /// The fewest other hospitals a sum holding this hospital's figures may have.
    pub min_other_hospitals: usize,
    /// The lowest secure-aggregation threshold the node accepts, as a fraction of the holders
    /// of each secret: `t` must exceed it.
    pub threshold_floor: Fraction,
    /// The most attempts at one round the node releases figures for.
    pub max_attempts_per_round: u32,
    /// The most releases beyond the first of each round, over the node's lifetime.
    pub max_retries_per_task: u32,
    /// Whether the hospital releases its own site figure of the final evaluation.
    pub release_site_figures: SiteFigures,
    /// The TorchScript modules the hospital approved, by file and SHA-256; a task naming any
    /// other module is refused.
    pub approved_modules: ApprovedModules,
}

/// Whether, and how, a hospital releases its own site figure of the final evaluation
/// (`[policy] release_site_figures`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteFigures {
    /// Never (the default).
    #[default]
    No,
    /// Only noised counts: the node's evaluation noise must be on. Releasing the noised vector
    /// that already went into the sum is post-processing of that release and costs no ε.
    Noised,
    /// Exact counts too, when the evaluation noise is off: the hospital's explicit choice to
    /// show its own held-out figures to the coordinator.
    Exact,
}

impl SiteFigures {
    /// Whether the hospital releases a site figure at all.
    pub fn opted_in(self) -> bool {
        self != Self::No
    }

    /// Whether a site figure of counts that are noised (`noised`) or exact may be released.
    pub fn allows(self, noised: bool) -> bool {
        match self {
            Self::No => false,
            Self::Noised => noised,
            Self::Exact => true,
        }
    }
}

impl Default for NodePolicy {
    fn default() -> Self {
        Self {
            members: None,
            require_secure_aggregation: true,
            min_other_hospitals: 2,
            threshold_floor: Fraction::TWO_THIRDS,
            max_attempts_per_round: 3,
            max_retries_per_task: 10,
            release_site_figures: SiteFigures::No,
            approved_modules: ApprovedModules::default(),
        }
    }
}

/// A fraction `numerator / denominator`, compared exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fraction {
    /// Numerator.
    pub numerator: u32,
    /// Denominator, never 0.
    pub denominator: u32,
}

impl Fraction {
    /// 2/3: Bonawitz et al.'s bound for the malicious setting.
    pub const TWO_THIRDS: Self = Self {
        numerator: 2,
        denominator: 3,
    };

    /// Whether `value` is strictly above this fraction of `of`.
    pub fn is_exceeded_by(self, value: usize, of: usize) -> bool {
        (value as u128) * u128::from(self.denominator) > (of as u128) * u128::from(self.numerator)
    }

    /// Parses `"a/b"` with `0 ≤ a ≤ b`, `b > 0`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not a fraction a/b between 0 and 1 (for example \"2/3\")");
        let (a, b) = text.split_once('/').ok_or_else(bad)?;
        let numerator: u32 = a.trim().parse().map_err(|_| bad())?;
        let denominator: u32 = b.trim().parse().map_err(|_| bad())?;
        if denominator == 0 || numerator > denominator {
            return Err(bad());
        }
        Ok(Self {
            numerator,
            denominator,
        })
    }
}

impl std::fmt::Display for Fraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.numerator, self.denominator)
    }
}

/// `[policy]` as written in `node.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    members: Option<PathBuf>,
    #[serde(default)]
    trust_ca_for_membership: bool,
    require_secure_aggregation: Option<bool>,
    min_other_hospitals: Option<usize>,
    threshold_floor: Option<String>,
    max_attempts_per_round: Option<u32>,
    max_retries_per_task: Option<u32>,
    #[serde(default)]
    release_site_figures: SiteFigures,
    #[serde(default)]
    approved_modules: Vec<PathBuf>,
}

impl RawPolicy {
    /// The policy, with defaults filled in and `resolve` applied to the member list's path;
    /// `Err` says which key is wrong.
    pub(crate) fn resolve(
        self,
        resolve: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<NodePolicy, String> {
        let defaults = NodePolicy::default();
        let members = match (self.members, self.trust_ca_for_membership) {
            (Some(_), true) => {
                return Err(
                    "policy.members and policy.trust_ca_for_membership exclude each other".into(),
                );
            }
            (Some(path), false) => Some(resolve(path)),
            (None, true) => None,
            (None, false) => {
                return Err("policy.members is missing: name the consortium's member list (written by `medfed-certs members`), or set policy.trust_ca_for_membership = true to let any certificate of the consortium CA into a sum".into());
            }
        };
        let threshold_floor = match self.threshold_floor {
            Some(text) => {
                Fraction::parse(&text).map_err(|e| format!("policy.threshold_floor: {e}"))?
            }
            None => defaults.threshold_floor,
        };
        let max_attempts_per_round = self
            .max_attempts_per_round
            .unwrap_or(defaults.max_attempts_per_round);
        if max_attempts_per_round == 0 {
            return Err("policy.max_attempts_per_round must be at least 1".into());
        }
        Ok(NodePolicy {
            members,
            require_secure_aggregation: self
                .require_secure_aggregation
                .unwrap_or(defaults.require_secure_aggregation),
            min_other_hospitals: self
                .min_other_hospitals
                .unwrap_or(defaults.min_other_hospitals),
            threshold_floor,
            max_attempts_per_round,
            max_retries_per_task: self
                .max_retries_per_task
                .unwrap_or(defaults.max_retries_per_task),
            release_site_figures: self.release_site_figures,
            approved_modules: ApprovedModules::load(
                self.approved_modules.into_iter().map(&resolve).collect(),
            )
            .map_err(|e| format!("policy.approved_modules: {e}"))?,
        })
    }
}

/// The policy at work: the configuration, the member list it pins, and how many times the node
/// has released figures for each round.
#[derive(Debug)]
pub struct PolicyGate {
    policy: NodePolicy,
    members: Option<MemberList>,
    /// Releases (a contribution or a masked input that left) per round.
    releases: HashMap<u64, u32>,
}

impl PolicyGate {
    /// A gate for `policy`, with its member list loaded, and the releases per round the node
    /// made before (from its egress log).
    pub fn new(
        policy: NodePolicy,
        members: Option<MemberList>,
        releases: HashMap<u64, u32>,
    ) -> Self {
        Self {
            policy,
            members,
            releases,
        }
    }

    /// The configured policy.
    pub fn policy(&self) -> &NodePolicy {
        &self.policy
    }

    /// The pinned member list, if any.
    pub fn members(&self) -> Option<&MemberList> {
        self.members.as_ref()
    }

    /// Checks how a request wants the figures sent: in the clear (`None`), or under secure
    /// aggregation with `params`, this node being `me`.
    pub fn check_request(
        &self,
        params: Option<&RoundParams>,
        me: &str,
    ) -> Result<(), PolicyViolation> {
        let Some(params) = params else {
            return if self.policy.require_secure_aggregation {
                Err(PolicyViolation::PlaintextRequested)
            } else {
                Ok(())
            };
        };
        self.check_sum(params.participants.iter().map(|p| p.identity.as_str()), me)?;
        let holders = params.holders_per_secret();
        if !self
            .policy
            .threshold_floor
            .is_exceeded_by(params.threshold, holders)
        {
            return Err(PolicyViolation::ThresholdBelowFloor {
                threshold: params.threshold,
                holders,
            });
        }
        Ok(())
    }

    /// Checks who would be in a sum with this node (`me`): members only, and enough others.
    pub fn check_sum<'a>(
        &self,
        identities: impl IntoIterator<Item = &'a str>,
        me: &str,
    ) -> Result<(), PolicyViolation> {
        let mut others = 0;
        for identity in identities {
            if let Some(members) = &self.members
                && !members.contains(identity)
            {
                return Err(PolicyViolation::NotAMember {
                    identity: identity.to_owned(),
                });
            }
            if identity != me {
                others += 1;
            }
        }
        if others < self.policy.min_other_hospitals {
            return Err(PolicyViolation::TooFewOtherHospitals {
                others,
                required: self.policy.min_other_hospitals,
            });
        }
        Ok(())
    }

    /// Checks an evaluation sum against the manifest's site-figure hospitals (`revealers`):
    /// once they release their own evaluation vectors, the coordinator can subtract them from
    /// the sum, which then protects the others' counts only as a sum over the hospitals that
    /// reveal nothing. Those, other than this node (`me`), must still number at least the
    /// hospital's `min_other_hospitals`, the minimum it asks of every sum. Applied to every
    /// evaluation, not only the final one: a hospital's per-group patient and outcome counts
    /// are the same in every model's exact counts (see `releases.rs`).
    pub fn check_revealers<'a>(
        &self,
        identities: impl IntoIterator<Item = &'a str>,
        me: &str,
        revealers: &[String],
    ) -> Result<(), PolicyViolation> {
        if revealers.is_empty() {
            return Ok(());
        }
        let others = identities
            .into_iter()
            .filter(|identity| *identity != me && !revealers.iter().any(|r| r == identity))
            .count();
        if others < self.policy.min_other_hospitals {
            return Err(PolicyViolation::RevealersLeaveTooFew {
                others,
                required: self.policy.min_other_hospitals,
            });
        }
        Ok(())
    }

    /// Checks that one more release for `round` stays within the attempt caps.
    pub fn check_attempt(&self, round: u64) -> Result<(), PolicyViolation> {
        let done = self.releases.get(&round).copied().unwrap_or(0);
        if done >= self.policy.max_attempts_per_round {
            return Err(PolicyViolation::AttemptCapPerRound {
                cap: self.policy.max_attempts_per_round,
            });
        }
        if done > 0 && self.retries() >= u64::from(self.policy.max_retries_per_task) {
            return Err(PolicyViolation::AttemptCapPerTask {
                cap: self.policy.max_retries_per_task,
            });
        }
        Ok(())
    }

    /// Counts a release for `round` (a contribution or masked input about to leave).
    pub fn count_release(&mut self, round: u64) {
        *self.releases.entry(round).or_default() += 1;
    }

    /// Releases beyond the first of each round, so far.
    fn retries(&self) -> u64 {
        self.releases
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }
}

/// Checks a peer's certificate and signature as the consortium CA does, and its key against the
/// pinned member list: a second certificate the CA issued under a member's name is refused.
pub struct PinnedVerifier<V> {
    inner: V,
    members: MemberList,
}

impl<V: PeerVerifier> PinnedVerifier<V> {
    /// Pins `inner`'s verdicts to `members`.
    pub fn new(inner: V, members: MemberList) -> Self {
        Self { inner, members }
    }
}

impl<V: PeerVerifier> PeerVerifier for PinnedVerifier<V> {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        if let Err(e) = self.members.check(identity, certificate) {
            tracing::warn!(error = %e, "a peer's certificate is not the pinned member's");
            return false;
        }
        self.inner.verify(identity, certificate, message, signature)
    }
}

#[cfg(test)]
mod tests {
    use medfed_protocol::secagg::Participant;

    use super::*;

    fn params(names: &[&str], threshold: usize) -> RoundParams {
        RoundParams {
            session: 1,
            round: 1,
            participants: names
                .iter()
                .enumerate()
                .map(|(i, name)| Participant {
                    index: i as u16 + 1,
                    identity: (*name).into(),
                })
                .collect(),
            threshold,
            neighbours: None,
            graph_seed: [0; 32],
            vector_len: 1,
            encoding_digest: [0; 32],
        }
    }

    fn members(names: &[&str]) -> MemberList {
        let text: String = names
            .iter()
            .map(|n| {
                format!(
                    "[[member]]\nname = \"{n}\"\nkey_sha256 = \"{}\"\n",
                    "00".repeat(32)
                )
            })
            .collect();
        MemberList::parse(&text).unwrap()
    }

    fn gate() -> PolicyGate {
        PolicyGate::new(
            NodePolicy::default(),
            Some(members(&["a", "b", "c", "d"])),
            HashMap::new(),
        )
    }

    #[test]
    fn the_default_policy_refuses_plaintext_strangers_small_sums_and_low_thresholds() {
        let gate = gate();
        assert_eq!(
            gate.check_request(None, "a"),
            Err(PolicyViolation::PlaintextRequested)
        );
        assert_eq!(
            gate.check_request(Some(&params(&["a", "b", "c"], 3)), "a"),
            Ok(())
        );
        assert_eq!(
            gate.check_request(Some(&params(&["a", "b", "mallory"], 3)), "a"),
            Err(PolicyViolation::NotAMember {
                identity: "mallory".into()
            })
        );
        assert_eq!(
            gate.check_request(Some(&params(&["a", "b"], 2)), "a"),
            Err(PolicyViolation::TooFewOtherHospitals {
                others: 1,
                required: 2
            })
        );
        // t > 2h/3: 3 of 4 passes, 2 of 4 does not; 2 of 3 does not.
        assert_eq!(
            gate.check_request(Some(&params(&["a", "b", "c", "d"], 3)), "a"),
            Ok(())
        );
        assert_eq!(
            gate.check_request(Some(&params(&["a", "b", "c", "d"], 2)), "a"),
            Err(PolicyViolation::ThresholdBelowFloor {
                threshold: 2,
                holders: 4
            })
        );
        assert!(
            gate.check_request(Some(&params(&["a", "b", "c"], 2)), "a")
                .is_err()
        );
    }

    #[test]
    fn an_evaluation_sum_must_keep_enough_hospitals_once_the_revealers_are_subtracted() {
        let gate = gate();
        let sum = ["a", "b", "c", "d"];
        // Nobody reveals: the plain rule (two others) is all that applies.
        assert_eq!(gate.check_revealers(sum, "a", &[]), Ok(()));
        // d reveals: {b, c} still hide a's counts.
        assert_eq!(gate.check_revealers(sum, "a", &["d".into()]), Ok(()));
        // c and d reveal: the coordinator would hold a + b, one other hospital.
        assert_eq!(
            gate.check_revealers(sum, "a", &["c".into(), "d".into()]),
            Err(PolicyViolation::RevealersLeaveTooFew {
                others: 1,
                required: 2
            })
        );
        // A revealer counts the others that stay hidden in the same way: it does not join a
        // sum whose release would expose the rest.
        assert_eq!(
            gate.check_revealers(["a", "b", "c"], "a", &["a".into(), "c".into()]),
            Err(PolicyViolation::RevealersLeaveTooFew {
                others: 1,
                required: 2
            })
        );
        assert_eq!(
            gate.check_revealers(sum, "a", &["a".into()]),
            Ok(()),
            "b, c and d stay hidden"
        );
    }

    #[test]
    fn site_figures_are_off_by_default_and_noised_only_allows_noised_counts() {
        let resolve = |p: PathBuf| p;
        let parse = |text: &str| {
            let raw: RawPolicy = toml::from_str(text).unwrap();
            raw.resolve(resolve).map(|p| p.release_site_figures)
        };
        let base = "trust_ca_for_membership = true\n";
        assert_eq!(parse(base), Ok(SiteFigures::No));
        assert_eq!(
            parse(&format!("{base}release_site_figures = \"noised\"")),
            Ok(SiteFigures::Noised)
        );
        assert_eq!(
            parse(&format!("{base}release_site_figures = \"exact\"")),
            Ok(SiteFigures::Exact)
        );
        assert!(
            toml::from_str::<RawPolicy>(&format!("{base}release_site_figures = \"yes\"")).is_err()
        );
        assert!(!SiteFigures::No.allows(true));
        assert!(SiteFigures::Noised.allows(true));
        assert!(!SiteFigures::Noised.allows(false));
        assert!(SiteFigures::Exact.allows(false));
    }

    #[test]
    fn the_bonawitz_bound_is_exact() {
        // 2h/3 exactly is not enough; floating point would let t = 4 of h = 6 through.
        assert!(!Fraction::TWO_THIRDS.is_exceeded_by(4, 6));
        assert!(Fraction::TWO_THIRDS.is_exceeded_by(5, 6));
        assert!(!Fraction::TWO_THIRDS.is_exceeded_by(2, 3));
        assert!(Fraction::TWO_THIRDS.is_exceeded_by(3, 3));
        assert_eq!(
            Fraction::parse("1/2"),
            Ok(Fraction {
                numerator: 1,
                denominator: 2
            })
        );
        for bad in ["3/2", "1/0", "half", "1/", "-1/2"] {
            assert!(Fraction::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attempts_are_capped_per_round_and_per_task() {
        let mut gate = gate();
        for _ in 0..3 {
            assert_eq!(gate.check_attempt(1), Ok(()));
            gate.count_release(1);
        }
        assert_eq!(
            gate.check_attempt(1),
            Err(PolicyViolation::AttemptCapPerRound { cap: 3 })
        );
        // Two retries spent in round 1; each later round retried until ten are spent.
        let mut round = 2;
        while gate.retries() < 10 {
            gate.count_release(round);
            gate.count_release(round);
            round += 1;
        }
        // A first attempt at a new round is still allowed; a retry is not.
        assert_eq!(gate.check_attempt(round), Ok(()));
        gate.count_release(round);
        assert_eq!(
            gate.check_attempt(round),
            Err(PolicyViolation::AttemptCapPerTask { cap: 10 })
        );
    }

    #[test]
    fn a_configuration_must_pin_members_or_say_it_trusts_the_ca() {
        let resolve = |p: PathBuf| PathBuf::from("/site").join(p);
        let err = RawPolicy::default().resolve(resolve).unwrap_err();
        assert!(err.contains("policy.members is missing"), "{err}");
        let pinned = RawPolicy {
            members: Some("members.toml".into()),
            ..RawPolicy::default()
        }
        .resolve(resolve)
        .unwrap();
        assert_eq!(pinned.members, Some(PathBuf::from("/site/members.toml")));
        assert_eq!(
            NodePolicy {
                members: None,
                ..pinned.clone()
            },
            NodePolicy::default()
        );
        let trusting = RawPolicy {
            trust_ca_for_membership: true,
            ..RawPolicy::default()
        };
        assert_eq!(trusting.resolve(resolve).unwrap().members, None);
        let bad = RawPolicy {
            trust_ca_for_membership: true,
            max_attempts_per_round: Some(0),
            ..RawPolicy::default()
        };
        assert!(
            bad.resolve(resolve)
                .unwrap_err()
                .contains("max_attempts_per_round")
        );
    }
}
