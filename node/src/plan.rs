//! `medfed-node plan`: what the node would release under a task manifest and its own policy,
//! before it joins — for the statistics round, each training round and the final evaluation:
//! which figures, how many, how many bytes on the wire, and the ε each round would cost.
//!
//! Bytes counted: the whole frame of the one message that carries the hospital's figures —
//! the masked input under secure aggregation (four bytes a masked 32-bit word), else the plain
//! contribution (eight bytes a statistic, four a round figure). The other secure-aggregation
//! messages (round keys, encrypted shares, the survivor-set signature, the unmasking shares)
//! depend on the number of participants and carry no figure; they are not counted.

use medfed_protocol::codec;
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::manifest::{TaskManifest, ThresholdRule};
use medfed_protocol::messages::{
    Contribution, ContributionKind, Message, PlainFigures, PrivacySpent,
};
use medfed_protocol::secagg::MaskedInput;
use medfed_protocol::secagg::encoding::{BlockEncoding, VectorEncoding};
use serde::Serialize;

use crate::Hospital;
use crate::config::PrivacyConfig;
use crate::ledger::LedgerEntry;
use crate::manifest::LISTED_ROUNDS;

/// What the byte counts cover.
const COUNTED: &str = "the frame of the message carrying the figures (masked input: 4 bytes a word; plain: 8 bytes a statistic, 4 a round figure); key, share, signature and unmasking messages are not counted";

/// What the node would release under a manifest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReleaseForecast {
    /// The manifest's digest, as the node logs it once approved.
    pub manifest: String,
    /// Whether the signature was checked (with `--coordinator-cert`).
    pub signature_checked: bool,
    /// Whether the hospital's policy accepts the manifest.
    pub accepted: bool,
    /// Why not, when it does not.
    pub refusal: Option<String>,
    /// Planned training rounds.
    pub rounds: u64,
    /// Fewest hospitals in a sum.
    pub min_nodes: u64,
    /// How the figures travel: `secure aggregation (…)` or `in the clear`.
    pub transport: String,
    /// Each exchange, in order (training rounds beyond [`LISTED_ROUNDS`] are summarised by the
    /// first and the last).
    pub exchanges: Vec<PlannedExchange>,
    /// Figures over the whole task.
    pub total_figures: u64,
    /// Bytes of the figures' frames over the whole task.
    pub total_bytes: u64,
    /// The hospital's privacy accounting; `None` when it does not train privately.
    pub privacy: Option<PrivacySummary>,
    /// What the byte counts cover.
    pub counted: &'static str,
}

/// One exchange of the task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedExchange {
    /// Its round (0: statistics; `rounds + 1`: the final evaluation).
    pub round: u64,
    /// `statistics`, `training` or `final_evaluation`.
    pub kind: &'static str,
    /// The figures it releases, by kind.
    pub figures: Vec<FigureCount>,
    /// Their number.
    pub total_figures: u64,
    /// Bytes of the frame that carries them.
    pub wire_bytes: u64,
    /// ε spent by the task's private releases once this exchange counts, on top of the
    /// ledger (`None` when the hospital does not train privately).
    pub epsilon_after: Option<f64>,
    /// How much this exchange adds to ε: `epsilon_after` less the previous listed exchange's
    /// (Rényi accounting composes sub-additively, so the increments shrink round by round).
    pub epsilon_round: Option<f64>,
}

/// A kind of figure and how many of it an exchange releases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FigureCount {
    /// What.
    pub what: &'static str,
    /// How many.
    pub count: u64,
}

/// The privacy side of a forecast.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PrivacySummary {
    /// The hospital's budget.
    pub target_epsilon: f64,
    /// Its δ.
    pub delta: f64,
    /// Spent before the task.
    pub spent_before: f64,
    /// After the whole task.
    pub total: f64,
    /// DP-SGD's noise multiplier in the training rounds (distributed DP's z in a distributed
    /// task).
    pub noise_multiplier: Option<f64>,
    /// In a distributed task, the local figures beside the central ones above.
    pub local: Option<LocalSummary>,
}

/// The local side of a distributed task's privacy: what this hospital's noise shares alone
/// guarantee, against the other hospitals colluding with the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalSummary {
    /// The hospital's cap, `[privacy] max_local_epsilon`.
    pub max_local_epsilon: Option<f64>,
    /// Local ε spent before the task.
    pub spent_before: f64,
    /// Local ε after the whole task.
    pub total: f64,
    /// Local ε after each listed training round and the final evaluation, in order.
    pub rounds: Vec<(u64, f64)>,
}

/// Forecasts what `hospital` would release under `manifest` with the privacy policy and ledger
/// entries `privacy` (`None`: no private training); `signature_checked` says whether the caller
/// verified the manifest's signature.
pub fn forecast(
    hospital: &Hospital,
    manifest: &TaskManifest,
    privacy: Option<(&PrivacyConfig, &[LedgerEntry])>,
    signature_checked: bool,
) -> ReleaseForecast {
    let schema = hospital.schema();
    let checked = hospital.check_plan_with(manifest, privacy);
    if manifest.validate().is_err() || manifest.model.validate().is_err() {
        // Nothing about an unusable manifest can be counted.
        return ReleaseForecast {
            manifest: manifest.digest().to_hex(),
            signature_checked,
            accepted: false,
            refusal: checked.err().map(|e| e.to_string()),
            rounds: manifest.rounds,
            min_nodes: manifest.min_nodes,
            transport: String::new(),
            exchanges: Vec::new(),
            total_figures: 0,
            total_bytes: 0,
            privacy: None,
            counted: COUNTED,
        };
    }
    let (accepted, refusal, privacy) = match checked {
        Ok(privacy) => (true, None, privacy),
        // A refused plan is still shown, with what it would cost where that can be priced.
        Err(refusal) => (
            false,
            Some(refusal.to_string()),
            privacy.and_then(|(config, entries)| {
                hospital.forecast_privacy(config, entries, manifest).ok()
            }),
        ),
    };
    let releases = &manifest.releases;
    let groups = schema.audit_groups().len();
    let params = manifest.model.layout().len();
    let secure = manifest.secure_aggregation.as_ref();
    let mut exchanges = Vec::new();
    let stats_len = schema.stats_len();
    let stats_bytes = match secure {
        Some(_) => {
            masked_bytes(VectorEncoding::new(vec![(stats_len, BlockEncoding::Wide)]).encoded_len())
        }
        None => plain_bytes(ContributionKind::Stats, stats_len),
    };
    exchanges.push(PlannedExchange {
        round: 0,
        kind: "statistics",
        figures: vec![FigureCount {
            what: "statistics (count, sums and sums of squares, level counts)",
            count: releases.statistics_figures,
        }],
        total_figures: releases.statistics_figures,
        wire_bytes: stats_bytes,
        epsilon_after: privacy.as_ref().map(|p| p.statistics.unwrap_or(p.spent)),
        epsilon_round: privacy
            .as_ref()
            .map(|p| p.statistics.map_or(0.0, |after| after - p.spent)),
    });
    let round_exchange = |round: u64, train: bool, epsilon_after: Option<f64>| {
        let evaluate = releases.evaluates(round, train);
        let layout = RoundLayout {
            params,
            train,
            evaluate,
            groups,
            bins: releases.score_bins,
            distributed: train && manifest.distributed_dp.is_some(),
        };
        let wire_bytes = match secure {
            Some(plan) => {
                let participants = usize::try_from(manifest.min_nodes).unwrap_or(usize::MAX);
                masked_bytes(
                    layout
                        .encoding(&plan.update_encoding(participants))
                        .encoded_len(),
                )
            }
            None => plain_bytes(ContributionKind::Round, layout.len()),
        };
        let mut figures = Vec::new();
        if evaluate {
            figures.extend([
                FigureCount {
                    what: "evaluation counts",
                    count: releases.evaluation_figures,
                },
                FigureCount {
                    what: "audit-group counts",
                    count: releases.audit_groups * releases.audit_group_figures,
                },
            ]);
        }
        if train {
            figures.push(FigureCount {
                what: if layout.distributed {
                    "update (noised integer sum of clipped gradients, one word a parameter)"
                } else {
                    "update (weighted parameters and weight)"
                },
                count: releases.update_figures,
            });
        }
        PlannedExchange {
            round,
            kind: if train {
                "training"
            } else {
                "final_evaluation"
            },
            total_figures: releases.round_figures(train, evaluate),
            figures,
            wire_bytes,
            epsilon_after,
            epsilon_round: None,
        }
    };
    let epsilon_at = |round: u64, train: bool| {
        privacy.as_ref().and_then(|p| {
            p.rounds
                .iter()
                .find(|c| c.round == round && c.train == train)
                .map(|c| c.epsilon_after)
        })
    };
    let listed: Vec<u64> = if manifest.rounds <= LISTED_ROUNDS {
        (1..=manifest.rounds).collect()
    } else {
        vec![1, manifest.rounds]
    };
    for round in listed {
        exchanges.push(round_exchange(round, true, epsilon_at(round, true)));
    }
    if releases.final_evaluation {
        let round = manifest.rounds.saturating_add(1);
        exchanges.push(round_exchange(round, false, epsilon_at(round, false)));
    }
    for i in 1..exchanges.len() {
        if let (Some(after), Some(before)) =
            (exchanges[i].epsilon_after, exchanges[i - 1].epsilon_after)
        {
            exchanges[i].epsilon_round = Some(after - before);
        }
    }
    // Over the whole task, every training round counted (not only the listed ones): those the
    // schedule evaluates (round 1 is one) and the others (round 2 is one, if any).
    let (mut total_figures, mut total_bytes) = (releases.statistics_figures, stats_bytes);
    let evaluated = releases.evaluated_rounds(manifest.rounds);
    for (example, times) in [(1, evaluated), (2, manifest.rounds - evaluated)] {
        let training = round_exchange(example, true, None);
        total_figures = total_figures.saturating_add(training.total_figures.saturating_mul(times));
        total_bytes = total_bytes.saturating_add(training.wire_bytes.saturating_mul(times));
    }
    if let Some(last) = exchanges.last().filter(|e| e.kind == "final_evaluation") {
        total_figures = total_figures.saturating_add(last.total_figures);
        total_bytes = total_bytes.saturating_add(last.wire_bytes);
    }
    ReleaseForecast {
        manifest: manifest.digest().to_hex(),
        signature_checked,
        accepted,
        refusal,
        rounds: manifest.rounds,
        min_nodes: manifest.min_nodes,
        transport: match secure {
            Some(plan) => format!(
                "secure aggregation (threshold {}, neighbours {}, update clipped to ±{}{})",
                match plan.threshold {
                    ThresholdRule::TwoThirdsPlusOne => "⌊2h/3⌋+1 of h holders".to_owned(),
                    ThresholdRule::Fixed(t) => t.to_string(),
                },
                plan.neighbours
                    .map_or_else(|| "all".to_owned(), |k| k.to_string()),
                plan.update_clip,
                plan.upload_bits.map_or_else(String::new, |bits| format!(
                    " and quantised to {bits} bits a value, {} values a word",
                    32 / bits.max(1)
                )),
            ),
            None => "in the clear".to_owned(),
        },
        exchanges,
        total_figures,
        total_bytes,
        privacy: privacy.as_ref().map(|p| PrivacySummary {
            target_epsilon: p.target_epsilon,
            delta: p.delta,
            spent_before: p.spent,
            total: p.total(),
            noise_multiplier: p.noise_multiplier,
            local: p.local.as_ref().map(|l| LocalSummary {
                max_local_epsilon: l.max_local_epsilon,
                spent_before: l.spent,
                total: l.total(),
                rounds: l
                    .rounds
                    .iter()
                    .map(|c| (c.round, c.epsilon_after))
                    .collect(),
            }),
        }),
        counted: COUNTED,
    }
}

impl ReleaseForecast {
    /// The forecast as text, for the operator.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "task manifest {}{}",
            self.manifest,
            if self.signature_checked {
                " (signature checked)"
            } else {
                " (signature not checked: give --coordinator-cert)"
            }
        );
        let _ = writeln!(
            out,
            "{} training rounds, at least {} hospitals in every sum, figures sent {}",
            self.rounds, self.min_nodes, self.transport
        );
        match &self.refusal {
            None => {
                let _ = writeln!(out, "policy: accepted");
            }
            Some(why) => {
                let _ = writeln!(out, "policy: REFUSED: {why}");
            }
        }
        let _ = writeln!(
            out,
            "\n{:>6}  {:<17} {:>10} {:>12} {:>10} {:>10}  figures",
            "round", "release", "figures", "bytes", "ε round", "ε after"
        );
        for e in &self.exchanges {
            let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
            let what: Vec<String> = e
                .figures
                .iter()
                .map(|f| format!("{} {}", f.count, f.what))
                .collect();
            let _ = writeln!(
                out,
                "{:>6}  {:<17} {:>10} {:>12} {:>10} {:>10}  {}",
                e.round,
                e.kind,
                e.total_figures,
                e.wire_bytes,
                show(e.epsilon_round),
                show(e.epsilon_after),
                what.join("; ")
            );
        }
        let _ = writeln!(
            out,
            "\ntotal: {} figures, {} bytes of figures on the wire",
            self.total_figures, self.total_bytes
        );
        match &self.privacy {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "privacy: ε {:.4} before the task, {:.4} after it, of a budget of {} at δ = {}{}",
                    p.spent_before,
                    p.total,
                    p.target_epsilon,
                    p.delta,
                    p.noise_multiplier
                        .map_or_else(String::new, |s| if p.local.is_some() {
                            format!(" (distributed DP z = {s:.4})")
                        } else {
                            format!(" (DP-SGD σ = {s:.4})")
                        })
                );
                if let Some(local) = &p.local {
                    let _ = writeln!(
                        out,
                        "distributed DP: the ε above is central (the sum of the threshold's noise shares); locally (this hospital's shares alone, against the others colluding with the coordinator) ε {:.4} before the task, {:.4} after it{}",
                        local.spent_before,
                        local.total,
                        local
                            .max_local_epsilon
                            .map_or_else(String::new, |cap| format!(", of a cap of {cap}"))
                    );
                    let after: Vec<String> = local
                        .rounds
                        .iter()
                        .map(|(round, epsilon)| format!("{round}: {epsilon:.4}"))
                        .collect();
                    let _ = writeln!(out, "local ε after round {}", after.join(", "));
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "privacy: no [privacy] section: training is NOT differentially private"
                );
            }
        }
        let _ = writeln!(out, "counted: {}", self.counted);
        out
    }
}

/// Figures up to this many are framed for real to count their bytes; beyond, the count is
/// extrapolated from a frame of this many (exact while the length prefix keeps its size, below
/// 2^30 figures).
const MEASURED_FIGURES: usize = 1 << 20;

/// Bytes of the frame of `message(len)`, each figure taking `width` bytes.
fn measured(len: usize, width: u64, message: impl Fn(usize) -> Message) -> u64 {
    let frame_len = |message: &Message| codec::frame(message).map_or(0, |frame| frame.len() as u64);
    if len <= MEASURED_FIGURES {
        frame_len(&message(len))
    } else {
        frame_len(&message(MEASURED_FIGURES))
            .saturating_add(width.saturating_mul((len - MEASURED_FIGURES) as u64))
    }
}

/// Bytes of the frame of a masked input of `words` words.
fn masked_bytes(words: usize) -> u64 {
    measured(words, 4, |words| {
        Message::SecAggInput(MaskedInput {
            session: 0,
            round: 0,
            values: vec![0; words],
        })
    })
}

/// Bytes of the frame of a plain contribution of `len` figures of `kind`.
fn plain_bytes(kind: ContributionKind, len: usize) -> u64 {
    let (width, values): (u64, fn(usize) -> PlainFigures) = match kind {
        ContributionKind::Stats => (8, |len| PlainFigures::Double(vec![0.0; len])),
        ContributionKind::Round => (4, |len| PlainFigures::Single(vec![0.0; len])),
    };
    measured(len, width, |len| {
        Message::Contribution(Contribution {
            session: 0,
            round: 0,
            kind,
            values: values(len),
            privacy: Some(PrivacySpent {
                epsilon: 0.0,
                delta: 0.0,
            }),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_are_the_frames_and_extrapolate_exactly() {
        // Masked words are four bytes each, plain statistics eight and round figures four.
        for (words, kind) in [
            (10, ContributionKind::Stats),
            (300, ContributionKind::Round),
        ] {
            let empty = masked_bytes(0);
            assert!(masked_bytes(words) >= empty + 4 * words as u64);
            assert!(masked_bytes(words) <= empty + 4 * words as u64 + 8);
            let width = if kind == ContributionKind::Stats {
                8
            } else {
                4
            };
            assert!(plain_bytes(kind, words) >= plain_bytes(kind, 0) + width * words as u64);
        }
        // Beyond the measured size, the extrapolation equals the real frame.
        let len = MEASURED_FIGURES + 1000;
        let real = codec::frame(&Message::SecAggInput(MaskedInput {
            session: 0,
            round: 0,
            values: vec![0; len],
        }))
        .unwrap()
        .len() as u64;
        assert_eq!(masked_bytes(len), real);
        let real = codec::frame(&Message::Contribution(Contribution {
            session: 0,
            round: 0,
            kind: ContributionKind::Round,
            values: PlainFigures::Single(vec![0.0; len]),
            privacy: Some(PrivacySpent {
                epsilon: 0.0,
                delta: 0.0,
            }),
        }))
        .unwrap()
        .len() as u64;
        assert_eq!(plain_bytes(ContributionKind::Round, len), real);
    }
}
