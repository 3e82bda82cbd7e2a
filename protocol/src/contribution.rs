//! The layout of a node's round vector, which the coordinator only ever sums over nodes.
//!
//! ```text
//! [ evaluation counts | per-group counts (fairness audit) | n·(w_local − w_round) | n ]
//!   ScoreBins::        groups × ScoreBins::                params values          1
//!   evaluation_len     group_len
//! ```
//! Under secure aggregation every figure but the evaluation's `loss_sum`, the update and the
//! weight is an integer count, sent in the two-word count encoding ([`RoundLayout::encoding`]).
//! The counts are of the round's starting model on the held-out split; the groups are the
//! schema's audit groups, in order. A training round off the task's evaluation schedule carries
//! neither counts block: only the update and its weight. The histograms have the task's
//! [`ScoreBins`]: by default 1000 bins for the pooled evaluation and 100 for each group. The update block is present only in
//! training rounds. Summed over nodes it yields the pooled evaluation, the pooled per-group
//! counts and the example-weighted FedAvg update `Σ n_k (w_k − w) / Σ n_k`.
//!
//! Under distributed differential privacy ([`RoundLayout::distributed`]) the update block is
//! instead the node's noised integer sum of clipped per-example gradients, one word of Z(2^32)
//! per parameter ([`crate::distributed_dp::NodeSum::finish`]), with no weight: the coordinator
//! reads the summed words with [`crate::distributed_dp::DdpParams::decode_sum`] and divides by
//! a public denominator, so no batch size or example count leaves the node.
//!
//! ```text
//! [ evaluation counts | per-group counts | noised Σ R(γ·g_i) + Z_node, as words ]
//!                                          params words
//! ```

use std::ops::Range;

use crate::evaluation::{EvalCounts, ScoreBins};
use crate::fairness::GroupCounts;
use crate::round::RoundSum;
use crate::secagg::encoding::{BlockEncoding, UpdateEncoding, VectorEncoding};

/// Shape of a round vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundLayout {
    /// Number of model parameters.
    pub params: usize,
    /// Whether the round trains (carries an update block).
    pub train: bool,
    /// Whether the round evaluates (carries the evaluation and per-group counts blocks).
    pub evaluate: bool,
    /// Number of audit groups.
    pub groups: usize,
    /// Bins of the evaluation's and each group's score histograms.
    pub bins: ScoreBins,
    /// Whether the update block is a distributed-DP sum (`params` words, no weight) rather
    /// than the weighted update and its weight.
    pub distributed: bool,
}

/// A node's local result for one round, before it is flattened for summation.
#[derive(Clone, Debug)]
pub struct RoundResult<'a> {
    /// Evaluation counts of the round's starting model on the node's held-out split, and the
    /// per-group counts on the same split, one per audit group, in order, with
    /// the layout's [`ScoreBins`]; in rounds that evaluate.
    pub evaluation: Option<(EvalCounts, Vec<GroupCounts>)>,
    /// Local training outcome, in training rounds of a layout that is not distributed.
    pub update: Option<LocalUpdate<'a>>,
    /// The node's noised integer sum as words of Z(2^32), in training rounds of a distributed
    /// layout.
    pub distributed_sum: Option<&'a [u32]>,
}

/// A node's locally trained model and its weight.
#[derive(Clone, Debug)]
pub struct LocalUpdate<'a> {
    /// The round's starting (global) parameters.
    pub start: &'a [f32],
    /// The parameters after local training.
    pub trained: &'a [f32],
    /// The weight of this node's update: its number of training examples, as its statistics
    /// released it (noised under differential privacy).
    pub weight: f64,
}

/// Sums of all nodes' round vectors, split back into their parts but the update block, which is
/// the size of the model and read in place ([`RoundLayout::update_range`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundTotals {
    /// Pooled evaluation counts, in rounds that evaluate.
    pub eval: Option<EvalCounts>,
    /// Pooled per-group counts, one per audit group (none in rounds that do not evaluate).
    pub groups: Vec<GroupCounts>,
    /// `Σ n_k`, the weight of the summed update `Σ n_k (w_k − w)`, in training rounds that are
    /// not distributed.
    pub update_weight: Option<f64>,
    /// The summed words of a distributed-DP update block, in training rounds that are (read
    /// them with [`crate::distributed_dp::DdpParams::decode_sum`]).
    pub distributed_sum: Option<Vec<u32>>,
}

impl RoundLayout {
    /// Length of the vector.
    pub fn len(&self) -> usize {
        self.counts_len() + if self.train { self.update_len() } else { 0 }
    }

    /// Length of the update block with its weight: `params + 1`, or `params` words when
    /// distributed.
    fn update_len(&self) -> usize {
        self.params + usize::from(!self.distributed)
    }

    /// Length of the counts blocks (the evaluation, then each group, with the layout's
    /// [`ScoreBins`]); 0 in a round that does not evaluate.
    fn counts_len(&self) -> usize {
        if self.evaluate {
            self.bins.evaluation_len() + self.groups * self.bins.group_len()
        } else {
            0
        }
    }

    /// Empty only for a round that neither trains nor evaluates, which no task asks for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How the vector is encoded for secure aggregation: the counts exactly as integers (two
    /// words each), the evaluation's `loss_sum` (a real) and the weight exactly in the wide
    /// fixed point (four words each), the update clipped to `update`'s bound in its fixed point
    /// (one word each) or, quantised, packed several values a word:
    ///
    /// ```text
    /// [ n     | loss_sum | confusion, histograms, groups | update            | weight ]
    ///   Count   Wide       Count                           Clipped or Packed   Wide
    /// ```
    pub fn encoding(&self, update: &UpdateEncoding) -> VectorEncoding {
        // `EvalCounts::write_vector` puts `n` first and `loss_sum` second; all else is counts.
        let mut blocks = Vec::new();
        if self.evaluate {
            blocks.extend([
                (1, BlockEncoding::Count),
                (1, BlockEncoding::Wide),
                (self.counts_len() - 2, BlockEncoding::Count),
            ]);
        }
        if self.train && self.distributed {
            blocks.push((self.params, BlockEncoding::Words));
        } else if self.train {
            blocks.push((self.params, update.block()));
            blocks.push((1, BlockEncoding::Wide));
        }
        VectorEncoding::new(blocks)
    }

    /// Flattens a node's result. Returns `None` if the result does not fit the layout (counts
    /// in a round that does not evaluate or none in one that does, another number of groups,
    /// histograms of other than the layout's bins, an update in
    /// an evaluation-only round, none in a training round, or parameters of the wrong length).
    pub fn encode(&self, result: &RoundResult<'_>) -> Option<Vec<f64>> {
        let binned = |counts: &GroupCounts, bins: usize| {
            counts.positive_scores.len() == bins && counts.negative_scores.len() == bins
        };
        let mut out = Vec::with_capacity(self.len());
        match (&result.evaluation, self.evaluate) {
            (None, false) => {}
            (Some((eval, groups)), true) => {
                if groups.len() != self.groups
                    || !binned(&eval.confusion, self.bins.evaluation as usize)
                    || !groups.iter().all(|g| binned(g, self.bins.group as usize))
                {
                    return None;
                }
                eval.write_vector(&mut out);
                for group in groups {
                    group.write_vector(&mut out);
                }
            }
            _ => return None,
        }
        match (
            &result.update,
            result.distributed_sum,
            self.train,
            self.distributed,
        ) {
            (None, None, false, _) => {}
            (None, Some(words), true, true) => {
                if words.len() != self.params {
                    return None;
                }
                out.extend(words.iter().map(|&w| f64::from(w)));
            }
            (Some(update), None, true, false) => {
                if update.start.len() != self.params || update.trained.len() != self.params {
                    return None;
                }
                out.extend(
                    update
                        .trained
                        .iter()
                        .zip(update.start)
                        .map(|(&t, &s)| update.weight * (f64::from(t) - f64::from(s))),
                );
                out.push(update.weight);
            }
            _ => return None,
        }
        Some(out)
    }

    /// Where a summed vector of a training round that is not distributed holds its update
    /// block `Σ n_k (w_k − w)` (the weight follows it); `None` if the layout has no such block.
    pub fn update_range(&self) -> Option<Range<usize>> {
        let start = self.counts_len();
        (self.train && !self.distributed).then(|| start..start + self.params)
    }

    /// Splits a summed vector held whole; `None` if its length does not fit the layout.
    pub fn decode(&self, sum: &[f64]) -> Option<RoundTotals> {
        if sum.len() != self.len() {
            return None;
        }
        let (counts, rest) = sum.split_at(self.counts_len());
        self.totals(counts, rest.get(self.params).copied(), || {
            // Each figure of a words block is a word the secure sum decoded as it is.
            Some(rest.iter().map(|&w| w as u32).collect())
        })
    }

    /// Splits a round's sum, decoding its counts and the update's weight but not the update
    /// block; `None` if its length does not fit the layout.
    pub fn decode_sum(&self, sum: &RoundSum) -> Option<RoundTotals> {
        if sum.len() != self.len() {
            return None;
        }
        let counts = sum.figures(0..self.counts_len())?;
        let update_end = self.counts_len() + self.params;
        let weight = sum
            .figures(update_end..update_end + 1)
            .and_then(|w| w.first().copied());
        self.totals(&counts, weight, || sum.words(self.counts_len()..self.len()))
    }

    /// The totals of a sum from its counts block, the figure after the update block (its
    /// weight, when it has one) and a reader of its distributed-DP words.
    fn totals(
        &self,
        counts: &[f64],
        weight: Option<f64>,
        distributed_words: impl FnOnce() -> Option<Vec<u32>>,
    ) -> Option<RoundTotals> {
        let (eval, groups) = if self.evaluate {
            let (eval, group_block) = counts.split_at(self.bins.evaluation_len());
            let groups = group_block
                .chunks_exact(self.bins.group_len())
                .map(|g| GroupCounts::from_vector_with_bins(g, self.bins.group as usize))
                .collect::<Option<Vec<_>>>()?;
            let eval = EvalCounts::from_vector_with_bins(eval, self.bins.evaluation as usize)?;
            (Some(eval), groups)
        } else {
            (None, Vec::new())
        };
        let (update_weight, distributed_sum) = match (self.train, self.distributed) {
            (false, _) => (None, None),
            (true, false) => (Some(weight?), None),
            (true, true) => (None, Some(distributed_words()?)),
        };
        Some(RoundTotals {
            eval,
            groups,
            update_weight,
            distributed_sum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluation::MAX_SCORE_BINS;
    use crate::secagg::fixed_point::FixedPoint;

    #[test]
    fn a_distributed_update_block_is_words_without_a_weight() {
        use crate::distributed_dp::{DdpConfig, DdpParams};
        use rand::SeedableRng;

        let layout = RoundLayout {
            params: 3,
            train: true,
            evaluate: false,
            groups: 0,
            bins: ScoreBins::FINE,
            distributed: true,
        };
        assert_eq!(layout.len(), 3);
        let encoding = layout.encoding(&UpdateEncoding::Fixed(FixedPoint {
            clip: 1.0,
            fractional_bits: 8,
        }));
        assert_eq!(encoding.encoded_len(), 3);
        // Two nodes' noised sums, through the secure-aggregation encoding and the layout, decode
        // to the sum of their examples within the noise.
        let params = DdpParams::new(DdpConfig::new(1.0, 3, 2, 2, 1.0)).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let mut sum = vec![0u32; 3];
        for example in [[0.5, -0.25, 0.0], [0.1, 0.2, -0.3]] {
            let mut node = params.node_sum();
            node.add_example(&example, &mut rng).unwrap();
            let words = node.finish(&mut rng);
            let values = layout
                .encode(&RoundResult {
                    evaluation: None,
                    update: None,
                    distributed_sum: Some(&words),
                })
                .unwrap();
            for (s, w) in sum
                .iter_mut()
                .zip(encoding.encode(&values, &mut rng).unwrap())
            {
                *s = s.wrapping_add(w);
            }
        }
        let summed = encoding.decode_sum(&sum, 2).unwrap();
        let totals = layout.decode(&summed).unwrap();
        assert_eq!((totals.update_weight, layout.update_range()), (None, None));
        let words = totals.distributed_sum.unwrap();
        let decoded = params.decode_sum(&words, 2).unwrap();
        let sd = params.noise_std_of_sum(2);
        for (got, want) in decoded.iter().zip([0.6, -0.05, -0.3]) {
            assert!((got - want).abs() < 6.0 * sd, "{got} vs {want} (sd {sd})");
        }
        // A weighted update does not fit a distributed layout, nor words a weighted one.
        let start = [0.0f32; 3];
        let weighted = RoundResult {
            evaluation: None,
            update: Some(LocalUpdate {
                start: &start,
                trained: &start,
                weight: 1.0,
            }),
            distributed_sum: None,
        };
        assert!(layout.encode(&weighted).is_none());
        let words = [0u32; 3];
        let plain = RoundLayout {
            distributed: false,
            ..layout
        };
        let distributed = RoundResult {
            evaluation: None,
            update: None,
            distributed_sum: Some(&words),
        };
        assert!(plain.encode(&distributed).is_none());
        assert_eq!(plain.len(), 4);
    }

    #[test]
    fn summed_vectors_give_weighted_average_update() {
        let layout = RoundLayout {
            params: 2,
            train: true,
            evaluate: true,
            groups: 0,
            bins: ScoreBins::FINE,
            distributed: false,
        };
        let start = [1.0f32, -1.0];
        let a = RoundResult {
            evaluation: Some((EvalCounts::from_predictions(&[0.9], &[1.0]), Vec::new())),
            update: Some(LocalUpdate {
                start: &start,
                trained: &[2.0, -1.0],
                weight: 3.0,
            }),
            distributed_sum: None,
        };
        let b = RoundResult {
            evaluation: Some((EvalCounts::from_predictions(&[0.2], &[0.0]), Vec::new())),
            update: Some(LocalUpdate {
                start: &start,
                trained: &[1.0, 1.0],
                weight: 1.0,
            }),
            distributed_sum: None,
        };
        let (va, vb) = (layout.encode(&a).unwrap(), layout.encode(&b).unwrap());
        let sum: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| x + y).collect();
        let totals = layout.decode(&sum).unwrap();
        let (delta, weight) = (
            &sum[layout.update_range().unwrap()],
            totals.update_weight.unwrap(),
        );
        assert_eq!(weight, 4.0);
        // FedAvg: (3·[2,-1] + 1·[1,1]) / 4 = [1.75, -0.5]; minus start = [0.75, 0.5].
        assert_eq!([delta[0] / weight, delta[1] / weight], [0.75, 0.5]);
        assert_eq!(totals.eval.unwrap().n, 2.0);
    }

    #[test]
    fn a_round_off_the_evaluation_schedule_carries_only_the_update() {
        let layout = RoundLayout {
            params: 2,
            train: true,
            evaluate: false,
            groups: 14,
            bins: ScoreBins::FINE,
            distributed: false,
        };
        assert_eq!(layout.len(), 3);
        let update = LocalUpdate {
            start: &[0.0, 0.0],
            trained: &[1.0, -1.0],
            weight: 2.0,
        };
        let bare = RoundResult {
            evaluation: None,
            update: Some(update.clone()),
            distributed_sum: None,
        };
        let values = layout.encode(&bare).unwrap();
        assert_eq!(values, [2.0, -2.0, 2.0]);
        let totals = layout.decode(&values).unwrap();
        assert_eq!((totals.eval, totals.groups.len()), (None, 0));
        assert_eq!(totals.update_weight, Some(2.0));
        assert_eq!(values[layout.update_range().unwrap()], [2.0, -2.0]);
        // Counts in a round that does not evaluate do not fit, nor their absence in one that
        // does.
        let counted = RoundResult {
            evaluation: Some((EvalCounts::zero(), Vec::new())),
            update: Some(update),
            distributed_sum: None,
        };
        assert!(layout.encode(&counted).is_none());
        let evaluating = RoundLayout {
            evaluate: true,
            groups: 0,
            ..layout
        };
        assert!(evaluating.encode(&bare).is_none());
        assert_eq!(
            layout
                .encoding(&UpdateEncoding::Fixed(FixedPoint {
                    clip: 4.0,
                    fractional_bits: 8
                }))
                .value_len(),
            3
        );
    }

    #[test]
    fn mismatched_results_are_refused() {
        let train = RoundLayout {
            params: 2,
            train: true,
            evaluate: true,
            groups: 0,
            bins: ScoreBins::FINE,
            distributed: false,
        };
        let eval_only = RoundLayout {
            params: 2,
            train: false,
            evaluate: true,
            groups: 0,
            bins: ScoreBins::FINE,
            distributed: false,
        };
        let no_update = RoundResult {
            evaluation: Some((EvalCounts::zero(), Vec::new())),
            update: None,
            distributed_sum: None,
        };
        assert!(train.encode(&no_update).is_none());
        assert_eq!(eval_only.encode(&no_update).unwrap().len(), eval_only.len());
        let short = RoundResult {
            evaluation: Some((EvalCounts::zero(), Vec::new())),
            update: Some(LocalUpdate {
                start: &[0.0],
                trained: &[0.0],
                weight: 1.0,
            }),
            distributed_sum: None,
        };
        assert!(train.encode(&short).is_none());
        assert!(train.decode(&[0.0; 3]).is_none());
    }

    #[test]
    fn a_task_with_coarse_score_bins_sends_and_sums_coarse_histograms() {
        let bins = ScoreBins {
            evaluation: 20,
            group: 10,
        };
        bins.check().unwrap();
        let layout = RoundLayout {
            params: 0,
            train: false,
            evaluate: true,
            groups: 3,
            bins,
            distributed: false,
        };
        assert_eq!(layout.len(), (2 + 4 + 2 * 20) + 3 * (4 + 2 * 10));
        let (scores, labels) = ([0.12, 0.87, 0.5], [0.0, 1.0, 1.0]);
        let result = |bins: ScoreBins| RoundResult {
            evaluation: Some((
                EvalCounts::from_predictions_with_bins(&scores, &labels, bins.evaluation as usize),
                vec![
                    GroupCounts::from_predictions_with_bins(&scores, &labels, bins.group as usize);
                    3
                ],
            )),
            update: None,
            distributed_sum: None,
        };
        let coarse = result(bins);
        let sum = layout.encode(&coarse).unwrap();
        let totals = layout.decode(&sum).unwrap();
        let eval = totals.eval.unwrap();
        assert_eq!(eval.confusion.bins(), 20);
        // 0.87 falls in bin 17 of 20 (0.85–0.90), 0.5 in bin 10.
        assert_eq!(eval.confusion.positive_scores[17], 1.0);
        assert_eq!(eval.confusion.positive_scores[10], 1.0);
        assert_eq!(totals.groups[2].bins(), 10);
        // Histograms at the default resolution do not fit a coarse layout.
        assert!(layout.encode(&result(ScoreBins::FINE)).is_none());
        for refused in [0, 15, MAX_SCORE_BINS + 10] {
            let bad = ScoreBins {
                evaluation: refused,
                group: 10,
            };
            assert_eq!(bad.check().unwrap_err().bins, refused);
        }
    }

    #[test]
    fn groups_carry_coarser_histograms_than_the_pooled_evaluation() {
        let layout = RoundLayout {
            params: 0,
            train: false,
            evaluate: true,
            groups: 14,
            bins: ScoreBins::FINE,
            distributed: false,
        };
        // The demo schema's 14 audit groups: 2 006 + 14 · 204 counts.
        assert_eq!(layout.len(), (2 + 4 + 2 * 1000) + 14 * (4 + 2 * 100));
        let scores = [0.12, 0.87];
        let labels = [0.0, 1.0];
        let result = RoundResult {
            evaluation: Some((
                EvalCounts::from_predictions(&scores, &labels),
                vec![GroupCounts::from_predictions(&scores, &labels); 14],
            )),
            update: None,
            distributed_sum: None,
        };
        let v = layout.encode(&result).unwrap();
        let totals = layout.decode(&v).unwrap();
        let (eval, groups) = result.evaluation.clone().unwrap();
        assert_eq!(totals.eval, Some(eval));
        assert_eq!(totals.groups, groups);
        assert_eq!(totals.groups[3].bins(), ScoreBins::FINE.group as usize);
        // Counts at the wrong resolution do not fit the layout.
        let mut wrong = result.clone();
        wrong.evaluation.as_mut().unwrap().1[0] =
            GroupCounts::from_predictions_with_bins(&scores, &labels, 1000);
        assert!(layout.encode(&wrong).is_none());
        let mut wrong = result;
        wrong.evaluation.as_mut().unwrap().0.confusion =
            GroupCounts::from_predictions(&scores, &labels);
        assert!(layout.encode(&wrong).is_none());
    }

    #[test]
    fn under_secure_aggregation_counts_take_two_words_and_sum_exactly_when_noised() {
        use rand::SeedableRng;
        use rand_chacha::ChaCha20Rng;

        let fixed = FixedPoint {
            clip: 1024.0,
            fractional_bits: 18,
        };
        let layout = RoundLayout {
            params: 1153,
            train: true,
            evaluate: true,
            groups: 14,
            bins: ScoreBins::FINE,
            distributed: false,
        };
        let encoding = layout.encoding(&fixed.into());
        assert_eq!(encoding.value_len(), layout.len());
        // The demo round vector: 4 861 counts in 2 words, loss_sum and the weight in 4, the
        // update in 1.
        let counts = layout.counts_len() - 1;
        assert_eq!(counts, 4861);
        assert_eq!(encoding.encoded_len(), counts * 2 + 4 + 1153 + 4);
        // Noised counts (negative here and there) and a real loss sum sum exactly.
        let start = vec![0.0f32; 1153];
        let trained = vec![0.5f32; 1153];
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let mut sum = vec![0u32; encoding.encoded_len()];
        let mut exact = vec![0.0; layout.len()];
        for node in 0..3 {
            let scores = [0.12, 0.87, 0.55];
            let labels = [0.0, 1.0, 1.0];
            let mut eval = EvalCounts::from_predictions(&scores, &labels);
            eval.n -= 5.0 * f64::from(node);
            eval.confusion.negative_scores[7] = -3.0;
            eval.loss_sum = 0.375 * f64::from(node + 1);
            let mut group = GroupCounts::from_predictions(&scores, &labels);
            group.tp = -2.0;
            let values = layout
                .encode(&RoundResult {
                    evaluation: Some((eval, vec![group; 14])),
                    update: Some(LocalUpdate {
                        start: &start,
                        trained: &trained,
                        weight: 3.0,
                    }),
                    distributed_sum: None,
                })
                .unwrap();
            for (s, v) in sum
                .iter_mut()
                .zip(encoding.encode(&values, &mut rng).unwrap())
            {
                *s = s.wrapping_add(v);
            }
            for (e, v) in exact.iter_mut().zip(&values) {
                *e += v;
            }
        }
        let decoded = encoding.decode_sum(&sum, 3).unwrap();
        let counts_end = layout.counts_len();
        assert_eq!(decoded[..counts_end], exact[..counts_end]);
        assert!(
            decoded[counts_end..layout.len() - 1]
                .iter()
                .all(|d| (d - 4.5).abs() < 1e-4)
        );
        assert_eq!(decoded[layout.len() - 1], 9.0);
        let totals = layout.decode(&decoded).unwrap();
        let eval = totals.eval.unwrap();
        assert_eq!(eval.n, 9.0 - 15.0);
        assert_eq!(eval.confusion.negative_scores[7], -9.0);
        assert_eq!(totals.groups[13].tp, -6.0);
        assert_eq!(eval.loss_sum, 2.25);
        // A fractional count is refused, not rounded.
        let mut values = vec![0.0; layout.len()];
        values[5] = 0.5;
        assert!(matches!(
            encoding.encode(&values, &mut rng),
            Err(crate::secagg::SecAggError::NotACount { position: 5, .. })
        ));
    }
}
