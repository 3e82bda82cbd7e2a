//! The secure-aggregation state machines driven in memory: a `Federation` of one server and n
//! participants, with dropouts injected after any phase and a coordinator that misbehaves.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

use super::test_keys::{TestSigner, TestVerifier};

/// When a participant stops answering.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DropAfter {
    Nothing,
    Start,
    Keys,
    Shares,
    Input,
    /// Signs the survivor set, then never unmasks.
    Signature,
}

/// The node's policy of the harness: everyone is acceptable.
fn accept_all(_: &[&str]) -> Result<(), SecAggError> {
    Ok(())
}

struct Federation {
    params: RoundParams,
    signers: Vec<TestSigner>,
    verifier: TestVerifier,
    inputs: Vec<Vec<u32>>,
    rng: ChaCha20Rng,
    /// A buffer for the next round to sum into (`ExpectShares::finish_into`), as the
    /// coordinator passes on the previous round's sum; `None`: a fresh one (`finish`).
    sum_buffer: Option<Vec<u32>>,
}

impl Federation {
    fn new(n: usize, neighbours: Option<usize>, vector_len: usize, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let participants: Vec<Participant> = (1..=n)
            .map(|i| Participant {
                index: i as u16,
                identity: format!("hospital-{i}"),
            })
            .collect();
        let mut signers = Vec::new();
        let mut keys = BTreeMap::new();
        for p in &participants {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rng, &mut seed);
            let signer = TestSigner::from_seed(&seed);
            keys.insert(p.identity.clone(), signer.certificate());
            signers.push(signer);
        }
        let mut params = RoundParams {
            session: 77,
            round: 3,
            participants,
            threshold: 1,
            neighbours,
            graph_seed: [9; 32],
            vector_len,
            encoding_digest: [0; 32],
        };
        params.threshold = RoundParams::default_threshold(params.holders_per_secret());
        let inputs = (0..n)
            .map(|_| {
                (0..vector_len)
                    .map(|_| rand::RngCore::next_u32(&mut rng))
                    .collect()
            })
            .collect();
        Self {
            params,
            signers,
            verifier: TestVerifier(keys),
            inputs,
            rng,
            sum_buffer: None,
        }
    }

    fn certificate(&self, index: u16) -> Vec<u8> {
        self.signers[usize::from(index) - 1].certificate()
    }

    /// Runs a whole round with honest parties; `drops[i]` says when participant i+1 stops.
    fn run(&mut self, drops: &[DropAfter]) -> Result<(Vec<u32>, Vec<u16>), SecAggError> {
        self.run_with(drops, |_| {}, |_, _| {})
    }

    /// As [`Self::run`], letting `tamper` modify the key directory (a malicious coordinator)
    /// and `tamper_response` each participant's unmask response (a malicious participant).
    fn run_with(
        &mut self,
        drops: &[DropAfter],
        tamper: impl FnOnce(&mut KeyDirectory),
        mut tamper_response: impl FnMut(u16, &mut UnmaskResponse),
    ) -> Result<(Vec<u32>, Vec<u16>), SecAggError> {
        let n = self.params.n();
        let drop = |i: usize| drops.get(i).copied().unwrap_or(DropAfter::Nothing);
        let mut server = ExpectKeys::new(self.params.clone())?;
        let mut states: BTreeMap<u16, ParticipantState> = BTreeMap::new();
        for i in 0..n {
            let index = i as u16 + 1;
            if drop(i) == DropAfter::Start {
                continue;
            }
            let (state, keys) = ExpectDirectory::new(
                self.params.clone(),
                index,
                self.inputs[i].clone(),
                &self.signers[i],
                &mut self.rng,
            )?;
            server.handle_keys(index, keys, self.certificate(index))?;
            states.insert(index, ParticipantState::Directory(state));
        }
        let (mut server, mut directory) = server.finish()?;
        tamper(&mut directory);
        for (&index, state) in states.iter_mut() {
            if drop(usize::from(index) - 1) == DropAfter::Keys {
                continue;
            }
            let package = state.handle_directory(&directory, &self.verifier, &mut self.rng)?;
            server.handle_package(index, package)?;
        }
        let (mut server, deliveries) = match self.sum_buffer.take() {
            Some(buffer) => server.finish_into(buffer)?,
            None => server.finish()?,
        };
        for (&index, delivery) in &deliveries {
            if drop(usize::from(index) - 1) == DropAfter::Shares {
                continue;
            }
            let input = states.get_mut(&index).unwrap().handle_delivery(delivery)?;
            assert!(
                differs_almost_everywhere(&input.values, &self.inputs[usize::from(index) - 1]),
                "the coordinator would see participant {index}'s input"
            );
            server.handle_input(index, &input)?;
        }
        let (mut server, consistency) = server.finish()?;
        for index in consistency.survivors.clone() {
            if drop(usize::from(index) - 1) == DropAfter::Input {
                continue;
            }
            let signature = states.get_mut(&index).unwrap().handle_consistency(
                &consistency,
                &self.signers[usize::from(index) - 1],
                &mut accept_all,
            )?;
            server.handle_signature(index, signature, &self.verifier)?;
        }
        let (mut server, request) = server.finish()?;
        let survivors = server.survivors();
        for (index, _) in request.signatures.clone() {
            if drop(usize::from(index) - 1) == DropAfter::Signature {
                continue;
            }
            let mut response = states.get_mut(&index).unwrap().handle_unmask(
                &request,
                &self.verifier,
                &mut accept_all,
            )?;
            for (peer, _) in &response.self_mask_shares {
                assert!(
                    !response.mask_key_shares.iter().any(|(p, _)| p == peer),
                    "both shares of {peer}"
                );
            }
            tamper_response(index, &mut response);
            server.handle_response(index, response)?;
        }
        Ok((server.finish()?, survivors))
    }

    /// Runs phases 1 to 3 honestly: every participant's state, waiting for the consistency
    /// request, and the request the coordinator would send.
    fn through_inputs(&mut self) -> (Vec<ParticipantState>, ExpectSignatures, ConsistencyRequest) {
        let (states, server) = self.inputs_in();
        let (server, request) = server.finish().unwrap();
        (states, server, request)
    }

    /// Every honest participant through phase 3: the server with every masked input summed.
    fn inputs_in(&mut self) -> (Vec<ParticipantState>, ExpectMaskedInputs) {
        let (mut states, mut server, deliveries) = self.through_shares();
        for (i, state) in states.iter_mut().enumerate() {
            let index = i as u16 + 1;
            let input = state.handle_delivery(&deliveries[&index]).unwrap();
            server.handle_input(index, &input).unwrap();
        }
        (states, server)
    }

    /// Every honest participant through phase 2: the server awaiting the masked inputs, and
    /// each participant's delivery.
    fn through_shares(
        &mut self,
    ) -> (
        Vec<ParticipantState>,
        ExpectMaskedInputs,
        BTreeMap<u16, ShareDelivery>,
    ) {
        let mut server = ExpectKeys::new(self.params.clone()).unwrap();
        let mut states = Vec::new();
        for i in 0..self.params.n() {
            let index = i as u16 + 1;
            let (state, keys) = ExpectDirectory::new(
                self.params.clone(),
                index,
                self.inputs[i].clone(),
                &self.signers[i],
                &mut self.rng,
            )
            .unwrap();
            server
                .handle_keys(index, keys, self.certificate(index))
                .unwrap();
            states.push(ParticipantState::Directory(state));
        }
        let (mut server, directory) = server.finish().unwrap();
        for (i, state) in states.iter_mut().enumerate() {
            let package = state
                .handle_directory(&directory, &self.verifier, &mut self.rng)
                .unwrap();
            server.handle_package(i as u16 + 1, package).unwrap();
        }
        let (server, deliveries) = server.finish().unwrap();
        (states, server, deliveries)
    }

    /// Participant `index`'s signature on `survivors`, as it would sign them.
    fn consistency_signature(&self, index: u16, survivors: &[u16]) -> Vec<u8> {
        let set = survivors.iter().copied().collect();
        self.signers[usize::from(index) - 1]
            .sign(&survivors_signed_bytes(&self.params.digest(), &set))
            .unwrap()
    }

    fn expected_sum(&self, survivors: &[u16]) -> Vec<u32> {
        let mut sum = vec![0u32; self.params.vector_len];
        for &index in survivors {
            for (s, v) in sum.iter_mut().zip(&self.inputs[usize::from(index) - 1]) {
                *s = s.wrapping_add(*v);
            }
        }
        sum
    }
}

/// Whether `masked` differs from `input` in all but a negligible fraction of positions.
fn differs_almost_everywhere(masked: &[u32], input: &[u32]) -> bool {
    let same = masked.iter().zip(input).filter(|(a, b)| a == b).count();
    same * 1000 <= masked.len()
}

#[test]
fn masks_cancel_exactly_without_dropouts() {
    let mut federation = Federation::new(5, None, 1000, 1);
    let (sum, survivors) = federation.run(&[]).unwrap();
    assert_eq!(survivors, vec![1, 2, 3, 4, 5]);
    assert_eq!(sum, federation.expected_sum(&survivors));
}

#[test]
fn a_dropout_after_each_phase_still_gives_the_exact_sum_of_survivors() {
    for (when, survivors) in [
        (DropAfter::Start, vec![1, 2, 4, 5, 6]),
        (DropAfter::Keys, vec![1, 2, 4, 5, 6]),
        (DropAfter::Shares, vec![1, 2, 4, 5, 6]),
        (DropAfter::Input, vec![1, 2, 3, 4, 5, 6]),
    ] {
        let mut federation = Federation::new(6, None, 257, 2);
        let drops = [DropAfter::Nothing, DropAfter::Nothing, when];
        let (sum, got) = federation
            .run(&drops)
            .unwrap_or_else(|e| panic!("{when:?}: {e}"));
        assert_eq!(got, survivors, "{when:?}");
        assert_eq!(sum, federation.expected_sum(&survivors), "{when:?}");
    }
}

#[test]
fn secagg_plus_neighbour_graph_with_dropouts() {
    // 12 participants, each pairing with 6: two drop at different phases.
    let mut federation = Federation::new(12, Some(6), 64, 3);
    let mut drops = vec![DropAfter::Nothing; 12];
    drops[4] = DropAfter::Shares;
    drops[9] = DropAfter::Input;
    let (sum, survivors) = federation.run(&drops).unwrap();
    assert!(!survivors.contains(&5) && survivors.contains(&10));
    assert_eq!(sum, federation.expected_sum(&survivors));
}

#[test]
fn fewer_survivors_than_the_threshold_abort_and_the_next_round_runs() {
    let mut federation = Federation::new(4, None, 16, 4);
    // Threshold ⌊8/3⌋ + 1 = 3: two dropouts leave 2.
    let drops = [DropAfter::Shares, DropAfter::Shares];
    let err = federation.run(&drops).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::BelowThreshold {
                have: 2,
                threshold: 3,
                ..
            }
        ),
        "{err}"
    );
    let (sum, survivors) = federation.run(&[]).unwrap();
    assert_eq!(sum, federation.expected_sum(&survivors));
}

#[test]
fn a_substituted_public_key_is_detected() {
    let mut federation = Federation::new(4, None, 8, 5);
    let err = federation
        .run_with(
            &[],
            |directory| directory.entries[1].keys.mask_public = [42; 32],
            |_, _| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, SecAggError::KeySubstituted { index: 2, .. }),
        "{err}"
    );
    // Substituting the certificate too does not help: it must belong to the identity.
    let mut federation = Federation::new(4, None, 8, 6);
    let forged = federation.certificate(1);
    let err = federation
        .run_with(&[], move |d| d.entries[2].certificate = forged, |_, _| {})
        .unwrap_err();
    assert!(
        matches!(err, SecAggError::KeySubstituted { index: 3, .. }),
        "{err}"
    );
}

/// Under SecAgg+ a participant pairs with a few neighbours only, but every key in the
/// directory must still check out: a coordinator's stranger, or a second key under a member's
/// name, must not get into a sum by sitting among other participants' neighbours.
#[test]
fn every_directory_entry_is_checked_not_only_the_neighbours() {
    let mut federation = Federation::new(8, Some(2), 8, 11);
    let graph = federation.params.graph().unwrap();
    // A participant that is not participant 1's neighbour: its forged keys must still stop 1.
    let stranger = (2..=8u16)
        .find(|j| !graph[0].contains(j))
        .expect("with 2 neighbours of 7, someone is not a neighbour");
    let forged = federation.certificate(if stranger == 2 { 3 } else { 2 });
    let position = usize::from(stranger) - 1;
    // Only participant 1 reads the directory (the others stop after advertising their keys), so
    // the stranger's own neighbours cannot be the ones that notice.
    let mut drops = vec![DropAfter::Keys; 8];
    drops[0] = DropAfter::Nothing;
    let err = federation
        .run_with(
            &drops,
            move |directory| directory.entries[position].certificate = forged,
            |_, _| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, SecAggError::KeySubstituted { index, .. } if index == stranger),
        "{err}"
    );
}

#[test]
fn a_participant_never_releases_both_shares_of_a_peer() {
    let mut federation = Federation::new(4, None, 8, 7);
    let (mut states, _, _) = federation.through_inputs();
    // A dishonest coordinator first calls participant 4 a dropout (with the signatures of the
    // three others on that set), then a survivor.
    let as_dropout = ConsistencyRequest {
        session: 77,
        round: 3,
        survivors: vec![1, 2, 3],
    };
    for (state, signer) in states.iter_mut().zip(&federation.signers).take(3) {
        state
            .handle_consistency(&as_dropout, signer, &mut accept_all)
            .unwrap();
    }
    let signed = |survivors: &[u16], signers: &[u16]| UnmaskRequest {
        session: 77,
        round: 3,
        survivors: survivors.to_vec(),
        signatures: signers
            .iter()
            .map(|&i| (i, federation.consistency_signature(i, survivors)))
            .collect(),
    };
    let first = states[0]
        .handle_unmask(
            &signed(&[1, 2, 3], &[1, 2, 3]),
            &federation.verifier,
            &mut accept_all,
        )
        .unwrap();
    assert!(first.mask_key_shares.iter().any(|(p, _)| *p == 4));
    assert!(!first.self_mask_shares.iter().any(|(p, _)| *p == 4));
    let second = states[0].handle_unmask(
        &signed(&[1, 2, 3, 4], &[1, 2, 3, 4]),
        &federation.verifier,
        &mut accept_all,
    );
    assert!(
        matches!(second, Err(SecAggError::Violation { .. })),
        "second unmask must be refused"
    );
}

#[test]
fn messages_from_another_round_are_refused() {
    let federation = Federation::new(3, None, 4, 8);
    let mut server = ExpectKeys::new(federation.params.clone()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (_, mut keys) = ExpectDirectory::new(
        federation.params.clone(),
        1,
        vec![0; 4],
        &federation.signers[0],
        &mut rng,
    )
    .unwrap();
    keys.round = 2;
    assert!(matches!(
        server.handle_keys(1, keys.clone(), federation.certificate(1)),
        Err(SecAggError::WrongRound {
            round: 2,
            expected: 3,
            ..
        })
    ));
    keys.round = 3;
    assert!(matches!(
        server.handle_keys(2, keys, federation.certificate(1)),
        Err(SecAggError::Violation { .. })
    ));
}

#[test]
fn an_input_is_taken_piece_by_piece_only_in_order_and_whole() {
    let mut sim = Federation::new(3, None, 10, 21);
    let (mut states, mut server, deliveries) = sim.through_shares();
    let inputs: Vec<MaskedInput> = states
        .iter_mut()
        .enumerate()
        .map(|(i, state)| state.handle_delivery(&deliveries[&(i as u16 + 1)]).unwrap())
        .collect();
    let pieces = |i: usize| inputs[i].chunks(4).collect::<Vec<_>>();
    // Participant 1 in order, in three pieces: whole, a survivor.
    for piece in pieces(0) {
        assert!(!server.has_input(1));
        server.handle_input_chunk(1, &piece).unwrap();
    }
    assert!(server.has_input(1));
    // Participant 2: its second piece first is refused, as is a piece past the end, a piece
    // claiming another length, and a repeat.
    let p2 = pieces(1);
    assert!(server.handle_input_chunk(2, &p2[1]).is_err());
    server.handle_input_chunk(2, &p2[0]).unwrap();
    let mut past = p2[1].clone();
    past.values.extend_from_slice(&[0; 8]);
    assert!(server.handle_input_chunk(2, &past).is_err());
    let mut longer = p2[1].clone();
    longer.total += 1;
    assert!(server.handle_input_chunk(2, &longer).is_err());
    assert!(server.handle_input_chunk(2, &p2[0]).is_err());
    // Half of participant 2 is in the sum: the phase cannot end.
    assert_eq!(server.partially_summed(), [2]);
    for piece in &p2[1..] {
        server.handle_input_chunk(2, piece).unwrap();
    }
    server.handle_input(3, &inputs[2]).unwrap();
    assert!(server.partially_summed().is_empty());
    // Whole and in pieces, the same sum: the masks cancel to the inputs' sum.
    let (_, request) = server.finish().unwrap();
    assert_eq!(request.survivors, [1, 2, 3]);
}

#[test]
fn inputs_that_wrap_the_ring_sum_correctly() {
    let mut federation = Federation::new(3, None, 4, 9);
    federation.inputs = vec![vec![u32::MAX; 4], vec![u32::MAX; 4], vec![5; 4]];
    let (sum, survivors) = federation.run(&[]).unwrap();
    assert_eq!(survivors.len(), 3);
    assert_eq!(sum, vec![3; 4]); // 2·(2^32 − 1) + 5 ≡ 3 (mod 2^32)
}

#[test]
fn a_reused_sum_buffer_is_zeroed_and_gives_the_exact_sum() {
    // Longer than the vector, shorter, and as long: each full of non-zero words.
    for (len, fill) in [(300, u32::MAX), (3, 0x5a5a_5a5a), (257, 1)] {
        let mut federation = Federation::new(6, None, 257, 12);
        federation.sum_buffer = Some(vec![fill; len]);
        let drops = [DropAfter::Nothing, DropAfter::Shares];
        let (sum, survivors) = federation.run(&drops).unwrap();
        assert_eq!(survivors, vec![1, 3, 4, 5, 6], "buffer of {len}");
        assert_eq!(sum, federation.expected_sum(&survivors), "buffer of {len}");
    }
}

#[test]
fn each_round_sums_into_the_previous_rounds_sum_without_carrying_it_over() {
    let mut federation = Federation::new(5, None, 1000, 13);
    let (mut previous, _) = federation.run(&[]).unwrap();
    for round in 0..3 {
        // Fresh inputs, and a dropout in every other round, so that no two sums are alike.
        let mut rng = ChaCha20Rng::seed_from_u64(100 + round);
        for value in federation.inputs.iter_mut().flatten() {
            *value = rand::RngCore::next_u32(&mut rng);
        }
        let drops = if round % 2 == 0 {
            vec![DropAfter::Input]
        } else {
            vec![]
        };
        let allocation = previous.as_ptr();
        federation.sum_buffer = Some(previous);
        let (sum, survivors) = federation.run(&drops).unwrap();
        assert_eq!(sum, federation.expected_sum(&survivors), "round {round}");
        assert_eq!(
            sum.as_ptr(),
            allocation,
            "round {round}: the buffer is reused"
        );
        previous = sum;
    }
}

#[test]
fn the_coordinator_never_holds_an_unmasked_update() {
    use super::encoding::{BlockEncoding, VectorEncoding};
    use super::fixed_point::FixedPoint;

    // Realistic inputs: encoded round vectors, mostly zeros (empty histogram bins, small updates).
    let encoding = VectorEncoding::new(vec![
        (200, BlockEncoding::Wide),
        (
            500,
            BlockEncoding::Clipped(FixedPoint {
                clip: 1024.0,
                fractional_bits: 18,
            }),
        ),
    ]);
    let mut federation = Federation::new(4, None, encoding.encoded_len(), 10);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    federation.inputs = (0..4)
        .map(|node| {
            let values: Vec<f64> = (0..700)
                .map(|i| if i % 7 == node { 0.25 * i as f64 } else { 0.0 })
                .collect();
            encoding.encode(&values, &mut rng).unwrap()
        })
        .collect();
    // Every masked input the server receives is checked inside `run` against the participant's
    // encoded input: they must differ in all but a negligible fraction (≤ 0.1%) of positions.
    let (sum, survivors) = federation.run(&[]).unwrap();
    assert_eq!(sum, federation.expected_sum(&survivors));
    let zeros = federation.inputs[0].iter().filter(|v| **v == 0).count();
    assert!(
        zeros > 1000,
        "the inputs are mostly zeros ({zeros}), so masking is what hides them"
    );
}

#[test]
fn quantised_updates_packed_under_real_masks_decode_to_the_survivors_sum() {
    use super::encoding::{BlockEncoding, VectorEncoding};
    use super::quantized::Quantized;

    // 8-bit lanes for 5 participants: 5 level bits (5 · 31 < 256 ≤ 5 · 63), four values a word; 1001
    // values, so the last word holds one. Counts before, a weight after, as in a round vector.
    let quantized = Quantized::fit(2.0, 8, 5);
    assert_eq!(quantized.level_bits, 5);
    let encoding = VectorEncoding::new(vec![
        (3, BlockEncoding::Count),
        (1001, BlockEncoding::Packed(quantized)),
        (1, BlockEncoding::Wide),
    ]);
    assert_eq!(encoding.encoded_len(), 3 * 2 + 251 + 4);
    encoding.check_capacity(5).unwrap();
    let values: Vec<Vec<f64>> = (0..5)
        .map(|node| {
            let mut v = vec![f64::from(node), 7.0, -1.0];
            v.extend((0..1001).map(|i| ((i * 13 + node * 7) % 29) as f64 / 7.0 - 2.0));
            v.push(10.5);
            v
        })
        .collect();
    // Participant 3 drops before its masked input: the sum is the other four's.
    let mut federation = Federation::new(5, None, encoding.encoded_len(), 21);
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    federation.inputs = values
        .iter()
        .map(|v| encoding.encode(v, &mut rng).unwrap())
        .collect();
    let (sum, survivors) = federation
        .run(&[DropAfter::Nothing, DropAfter::Nothing, DropAfter::Keys])
        .unwrap();
    assert_eq!(survivors, vec![1, 2, 4, 5]);
    assert_eq!(sum, federation.expected_sum(&survivors));
    let decoded = encoding.decode_sum(&sum, survivors.len()).unwrap();
    let kept = SecureSum::new(encoding.clone(), sum.clone(), survivors.len()).unwrap();
    assert_eq!(kept.figures(0..kept.len()).unwrap(), decoded);
    let summed = |i: usize| -> f64 {
        survivors
            .iter()
            .map(|&s| values[usize::from(s) - 1][i])
            .sum()
    };
    assert_eq!(&decoded[..3], &[summed(0), 28.0, -4.0]);
    assert_eq!(decoded[1004], 42.0);
    // Each input is off by less than a step, 2B/L.
    let step = 4.0 / 31.0;
    for (i, got) in decoded.iter().enumerate().take(1004).skip(3) {
        assert!(
            (got - summed(i)).abs() < 4.0 * step,
            "value {i}: {got} vs {}",
            summed(i)
        );
    }
    // Read as the sum of one input, the words are out of range: refused.
    assert!(matches!(
        encoding.decode_sum(&sum, 1),
        Err(SecAggError::LimbOutOfRange { .. })
    ));
}

#[test]
fn counts_decode_exactly_with_the_number_of_inputs_summed_whatever_phase_a_node_drops_in() {
    use super::encoding::{BlockEncoding, VectorEncoding};

    // Counts of both signs, at the ends of their range, and a real in the wide encoding.
    let encoding = VectorEncoding::new(vec![(6, BlockEncoding::Count), (1, BlockEncoding::Wide)]);
    let (min, max) = (-(2f64.powi(31)), 2f64.powi(31) - 1.0);
    let values: Vec<Vec<f64>> = (1..=6)
        .map(|i| {
            let i = f64::from(i);
            vec![
                -7.0 * i,
                100.0 * i,
                0.0,
                min + i,
                max - i,
                i - 3.0,
                0.25 * i,
            ]
        })
        .collect();
    // A node that drops before sending its masked input is not in the sum; one that sent it and
    // then failed to unmask is (its self-mask is removed from its neighbours' shares).
    for (when, in_sum) in [
        (DropAfter::Start, vec![1, 2, 4, 5, 6]),
        (DropAfter::Keys, vec![1, 2, 4, 5, 6]),
        (DropAfter::Shares, vec![1, 2, 4, 5, 6]),
        (DropAfter::Input, vec![1, 2, 3, 4, 5, 6]),
        (DropAfter::Nothing, vec![1, 2, 3, 4, 5, 6]),
    ] {
        let mut federation = Federation::new(6, None, encoding.encoded_len(), 12);
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        federation.inputs = values
            .iter()
            .map(|v| encoding.encode(v, &mut rng).unwrap())
            .collect();
        let drops = [DropAfter::Nothing, DropAfter::Nothing, when];
        let (sum, survivors) = federation
            .run(&drops)
            .unwrap_or_else(|e| panic!("{when:?}: {e}"));
        assert_eq!(survivors, in_sum, "{when:?}");
        let decoded = encoding.decode_sum(&sum, survivors.len()).unwrap();
        let exact: Vec<f64> = (0..7)
            .map(|i| {
                survivors
                    .iter()
                    .map(|&s| values[usize::from(s) - 1][i])
                    .sum()
            })
            .collect();
        assert_eq!(decoded, exact, "{when:?}");
        assert!(
            decoded[0] < 0.0 && decoded[1] > 0.0,
            "{when:?}: {decoded:?}"
        );
    }
}

#[test]
fn counts_decode_exactly_under_secagg_plus_with_dropouts_in_two_phases() {
    use super::encoding::{BlockEncoding, VectorEncoding};

    let encoding = VectorEncoding::new(vec![(3, BlockEncoding::Count)]);
    let values: Vec<Vec<f64>> = (0..12)
        .map(|i| {
            let i = f64::from(i);
            vec![-(i * i), 1000.0 + i, if i < 6.0 { -1.0 } else { 1.0 }]
        })
        .collect();
    let mut federation = Federation::new(12, Some(6), encoding.encoded_len(), 14);
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    federation.inputs = values
        .iter()
        .map(|v| encoding.encode(v, &mut rng).unwrap())
        .collect();
    let mut drops = vec![DropAfter::Nothing; 12];
    drops[4] = DropAfter::Shares;
    drops[9] = DropAfter::Input;
    let (sum, survivors) = federation.run(&drops).unwrap();
    assert_eq!(survivors.len(), 11);
    assert!(!survivors.contains(&5) && survivors.contains(&10));
    let exact = |i: usize| -> f64 {
        survivors
            .iter()
            .map(|&s| values[usize::from(s) - 1][i])
            .sum()
    };
    assert_eq!(
        encoding.decode_sum(&sum, survivors.len()).unwrap(),
        vec![exact(0), exact(1), exact(2)]
    );
    // Participant 5 (one of the six −1s) is not in the sum; participant 10 (a +1) is.
    assert_eq!(exact(2), 1.0);
}

// ---- issue 12: a malicious coordinator (attacks 2 and 7) ---------------------------------------

/// An unmask request for `survivors` carrying `signatures`.
fn unmask_request(survivors: &[u16], signatures: Vec<(u16, Vec<u8>)>) -> UnmaskRequest {
    UnmaskRequest {
        session: 77,
        round: 3,
        survivors: survivors.to_vec(),
        signatures,
    }
}

fn consistency_request(survivors: &[u16]) -> ConsistencyRequest {
    ConsistencyRequest {
        session: 77,
        round: 3,
        survivors: survivors.to_vec(),
    }
}

/// Issue 12, attack 2: the coordinator tells the victim's peers different survivor sets —
/// "the victim survived" to two of them (whose shares of its self-mask seed it then wants) and
/// "the victim dropped" to the third (a share of its mask key). Each peer signs what it was
/// told; none holds t = 3 signatures on its own set, whatever signatures the coordinator
/// bundles, so none reveals anything.
#[test]
fn regression_issue_12_split_survivor_sets_reveal_no_share() {
    let mut federation = Federation::new(4, None, 16, 21);
    assert_eq!(federation.params.threshold, 3);
    let victim = 4;
    let (mut states, _, _) = federation.through_inputs();
    let all = [1, 2, 3, 4];
    let without_victim = [1, 2, 3];
    let mut signature_of = BTreeMap::new();
    for (index, told) in [(1u16, &all[..]), (2, &all[..]), (3, &without_victim[..])] {
        let signature = states[usize::from(index) - 1]
            .handle_consistency(
                &consistency_request(told),
                &federation.signers[usize::from(index) - 1],
                &mut accept_all,
            )
            .unwrap();
        signature_of.insert(index, signature.signature);
    }
    let sig = |i: u16| (i, signature_of[&i].clone());
    // The coordinator's best tries, one per peer (each peer answers one unmask request).
    let tries = [
        // Every signature it holds, on the set "all": 3's is on another set.
        (1u16, unmask_request(&all, vec![sig(1), sig(2), sig(3)])),
        // Only the valid ones: two, below the threshold.
        (2, unmask_request(&all, vec![sig(1), sig(2)])),
        // "Without the victim", with every signature: 1's and 2's are on another set.
        (
            3,
            unmask_request(&without_victim, vec![sig(1), sig(2), sig(3)]),
        ),
    ];
    let mut revealed = Vec::new();
    for (index, request) in &tries {
        let result = states[usize::from(*index) - 1].handle_unmask(
            request,
            &federation.verifier,
            &mut accept_all,
        );
        match result {
            Err(SecAggError::BadConsistencySignature { .. })
            | Err(SecAggError::TooFewSignatures {
                have: 2,
                threshold: 3,
            }) => {}
            other => revealed.push((*index, other)),
        }
    }
    assert!(revealed.is_empty(), "shares revealed: {revealed:?}");
    // A forged signature of the victim does not make up the number either.
    let mut federation = Federation::new(4, None, 16, 22);
    let (mut states, _, _) = federation.through_inputs();
    for (i, state) in states.iter_mut().enumerate().take(2) {
        state
            .handle_consistency(
                &consistency_request(&all),
                &federation.signers[i],
                &mut accept_all,
            )
            .unwrap();
    }
    let forged = (victim, federation.consistency_signature(1, &all));
    let request = unmask_request(
        &all,
        vec![
            (1, federation.consistency_signature(1, &all)),
            (2, federation.consistency_signature(2, &all)),
            forged,
        ],
    );
    let result = states[0].handle_unmask(&request, &federation.verifier, &mut accept_all);
    assert_eq!(
        result.map(drop),
        Err(SecAggError::BadConsistencySignature { index: victim })
    );
}

/// Issue 12, attack 2, with the victim asked too: the three who were told "the victim
/// survived" (the victim among them) hold three signatures on that set and reveal shares of its
/// self-mask seed; the peer told "the victim dropped" holds one and reveals nothing. The
/// coordinator never gets a single share of the victim's mask key, let alone t.
#[test]
fn regression_issue_12_the_victims_two_secrets_are_never_both_revealed() {
    let mut federation = Federation::new(4, None, 16, 23);
    let victim = 4u16;
    let (mut states, _, _) = federation.through_inputs();
    let all = [1, 2, 3, 4];
    let without_victim = [1, 2, 3];
    let told = |index: u16| -> &[u16] { if index == 3 { &without_victim } else { &all } };
    let mut signatures: BTreeMap<Vec<u16>, Vec<(u16, Vec<u8>)>> = BTreeMap::new();
    for index in 1..=4u16 {
        let signature = states[usize::from(index) - 1]
            .handle_consistency(
                &consistency_request(told(index)),
                &federation.signers[usize::from(index) - 1],
                &mut accept_all,
            )
            .unwrap();
        signatures
            .entry(told(index).to_vec())
            .or_default()
            .push((index, signature.signature));
    }
    let (mut self_mask_shares, mut mask_key_shares) = (0, 0);
    for index in 1..=4u16 {
        let set = told(index);
        let request = unmask_request(set, signatures[set].clone());
        let Ok(response) = states[usize::from(index) - 1].handle_unmask(
            &request,
            &federation.verifier,
            &mut accept_all,
        ) else {
            assert_eq!(index, 3, "only the peer told 'the victim dropped' refuses");
            continue;
        };
        self_mask_shares += response
            .self_mask_shares
            .iter()
            .filter(|(peer, _)| *peer == victim)
            .count();
        mask_key_shares += response
            .mask_key_shares
            .iter()
            .filter(|(peer, _)| *peer == victim)
            .count();
    }
    assert_eq!((self_mask_shares, mask_key_shares), (3, 0));
}

/// Issue 12, attack 2: the victim is given threshold 2, its peers threshold 3. Its advert is
/// signed over the digest of its parameters, which its peers compare with theirs: they refuse
/// it, and the victim refuses theirs. The coordinator cannot pass the victim's advert off as
/// made for the peers' parameters either: the digest is under the signature.
#[test]
fn regression_issue_12_per_node_parameters_fail_at_the_peers() {
    let mut federation = Federation::new(4, None, 8, 24);
    let victim = 4u16;
    let mut victims_params = federation.params.clone();
    victims_params.threshold = 2;
    let mut states = Vec::new();
    let mut entries = Vec::new();
    for index in 1..=4u16 {
        let params = if index == victim {
            victims_params.clone()
        } else {
            federation.params.clone()
        };
        let (state, keys) = ExpectDirectory::new(
            params,
            index,
            vec![0; 8],
            &federation.signers[usize::from(index) - 1],
            &mut federation.rng,
        )
        .unwrap();
        states.push(ParticipantState::Directory(state));
        entries.push(DirectoryEntry {
            keys,
            certificate: federation.certificate(index),
        });
    }
    // An honest coordinator refuses the victim's keys outright.
    let mut honest = ExpectKeys::new(federation.params.clone()).unwrap();
    assert!(matches!(
        honest.handle_keys(
            victim,
            entries[3].keys.clone(),
            federation.certificate(victim)
        ),
        Err(SecAggError::ParamsMismatch { index: 4, .. })
    ));
    // A malicious one relays them: every peer refuses.
    let directory = KeyDirectory {
        session: 77,
        round: 3,
        entries: entries.clone(),
    };
    for (i, state) in states.iter_mut().enumerate() {
        let result = state.handle_directory(&directory, &federation.verifier, &mut federation.rng);
        let expected = if i + 1 == usize::from(victim) {
            1
        } else {
            victim
        };
        assert!(
            matches!(result, Err(SecAggError::ParamsMismatch { index, .. }) if index == expected),
            "participant {}: {:?}",
            i + 1,
            result.map(drop)
        );
    }
    // Relabelling the victim's advert with the peers' digest breaks its signature.
    let (state, own) = ExpectDirectory::new(
        federation.params.clone(),
        1,
        vec![0; 8],
        &federation.signers[0],
        &mut federation.rng,
    )
    .unwrap();
    let mut relabelled = KeyDirectory {
        session: 77,
        round: 3,
        entries,
    };
    relabelled.entries[0].keys = own;
    relabelled.entries[3].keys.params_digest = federation.params.digest();
    let result = state.handle_directory(&relabelled, &federation.verifier, &mut federation.rng);
    assert!(
        matches!(result, Err(SecAggError::KeySubstituted { index: 4, .. })),
        "{:?}",
        result.map(drop)
    );
}

/// Shifts `share` (held by `share.x`, combined with shares of `holders`) so that the secret
/// rebuilt from them moves by 256 in its first half (its second byte: X25519 clamping ignores
/// the low bits of the first): a deliberate tamper that stays in the range `shamir::combine`
/// accepts (it adds 256·λ⁻¹, λ the share's Lagrange coefficient at 0, to the first half).
fn nudge(share: &mut shamir::Share, holders: &[u16]) {
    use vsss_rs::curve25519_dalek::scalar::Scalar;

    let xj = Scalar::from(u64::from(share.x));
    let mut lambda = Scalar::ONE;
    for &m in holders.iter().filter(|&&m| m != share.x) {
        let xm = Scalar::from(u64::from(m));
        lambda *= xm * (xm - xj).invert();
    }
    let mut repr = [0u8; 32];
    repr.copy_from_slice(&share.y[..32]);
    let y = Scalar::from_canonical_bytes(repr).unwrap();
    share.y[..32].copy_from_slice((y + Scalar::from(256u64) * lambda.invert()).as_bytes());
}

/// Issue 12, attack 7: a participant reveals a wrong share of a survivor's self-mask seed,
/// shifted so that the shares still combine to a seed in range. The coordinator checks the
/// rebuilt seed against the commitment in the survivor's signed advert and fails the round
/// instead of returning a sum with a mask left in it.
#[test]
fn regression_issue_12_a_tampered_self_mask_share_fails_the_round() {
    let mut federation = Federation::new(4, None, 16, 25);
    let result = federation.run_with(
        &[],
        |_| {},
        |index, response| {
            if index == 2 {
                let (_, share) = response
                    .self_mask_shares
                    .iter_mut()
                    .find(|(peer, _)| *peer == 3)
                    .unwrap();
                nudge(share, &[1, 2, 3, 4]);
            }
        },
    );
    assert_eq!(
        result,
        Err(SecAggError::CommitmentMismatch {
            index: 3,
            secret: SecretKind::SelfMaskSeed,
        })
    );
    // A garbled share fails the round too, one way or the other: never a sum.
    let mut federation = Federation::new(4, None, 16, 25);
    let result = federation.run_with(
        &[],
        |_| {},
        |index, response| {
            if index == 2 {
                response.self_mask_shares[0].1.y[5] ^= 0x40;
            }
        },
    );
    assert!(
        matches!(
            result,
            Err(SecAggError::CommitmentMismatch { .. } | SecAggError::Crypto(_))
        ),
        "{result:?}"
    );
}

/// Issue 12, attack 7: a wrong share of a dropout's mask key is caught by checking the rebuilt
/// key against the public key in its signed advert.
#[test]
fn regression_issue_12_a_tampered_mask_key_share_fails_the_round() {
    let mut federation = Federation::new(4, None, 16, 26);
    let drops = [
        DropAfter::Nothing,
        DropAfter::Nothing,
        DropAfter::Nothing,
        DropAfter::Shares,
    ];
    let result = federation.run_with(
        &drops,
        |_| {},
        |index, response| {
            if index == 1 {
                let (_, share) = response
                    .mask_key_shares
                    .iter_mut()
                    .find(|(peer, _)| *peer == 4)
                    .unwrap();
                nudge(share, &[1, 2, 3]);
            }
        },
    );
    assert_eq!(
        result,
        Err(SecAggError::CommitmentMismatch {
            index: 4,
            secret: SecretKind::MaskKey,
        })
    );
    // Untampered, the same round gives the exact sum.
    let mut federation = Federation::new(4, None, 16, 26);
    let (sum, survivors) = federation.run(&drops).unwrap();
    assert_eq!(sum, federation.expected_sum(&survivors));
}

/// Issue 12, attack 7: a participant whose input has a limb far out of range (2^31 in a limb
/// of a count or of a wide value) leaves the unmasked sum out of range: decoding refuses it,
/// naming the word, rather than publish a figure shifted by 2^47.
#[test]
fn regression_issue_12_an_out_of_range_limb_fails_the_round() {
    use super::encoding::{BlockEncoding, VectorEncoding};

    let encoding = VectorEncoding::new(vec![(2, BlockEncoding::Count), (1, BlockEncoding::Wide)]);
    for word in [1, 6] {
        let mut federation = Federation::new(4, None, encoding.encoded_len(), 27);
        let mut rng = ChaCha20Rng::seed_from_u64(28);
        federation.inputs = (0..4)
            .map(|i| {
                let i = f64::from(i);
                encoding.encode(&[i, -i, 0.5 * i], &mut rng).unwrap()
            })
            .collect();
        let (sum, survivors) = federation.run(&[]).unwrap();
        assert_eq!(
            encoding.decode_sum(&sum, survivors.len()).unwrap(),
            vec![6.0, -6.0, 3.0]
        );
        federation.inputs[1][word] = 1 << 31;
        let (sum, survivors) = federation.run(&[]).unwrap();
        let err = encoding.decode_sum(&sum, survivors.len()).unwrap_err();
        assert!(
            matches!(err, SecAggError::LimbOutOfRange { position, summed_inputs: 4, .. } if position == word),
            "{err}"
        );
    }
}

/// Signs the survivor set "everyone" at each of 4 participants; returns the federation and
/// their states, waiting for the unmask request.
fn signed_by_everyone(seed: u64) -> (Federation, Vec<ParticipantState>) {
    let mut federation = Federation::new(4, None, 8, seed);
    let (mut states, _, request) = federation.through_inputs();
    for (state, signer) in states.iter_mut().zip(&federation.signers) {
        state
            .handle_consistency(&request, signer, &mut accept_all)
            .unwrap();
    }
    (federation, states)
}

/// Issue 12, attack 2: a participant reveals nothing on an unmask request that lacks `t` valid
/// signatures, from distinct survivors, on exactly the set it signed — and, having refused,
/// reveals nothing on a good request afterwards either.
#[test]
fn regression_issue_12_unmask_requests_without_t_valid_signatures_reveal_nothing() {
    let all = [1u16, 2, 3, 4];
    type Case = (
        &'static str,
        fn(&Federation) -> UnmaskRequest,
        fn(&SecAggError) -> bool,
    );
    let cases: [Case; 9] = [
        (
            "too few",
            |f| unmask_request(&[1, 2, 3, 4], sigs(f, &[1, 2], &[1, 2, 3, 4])),
            |e| {
                *e == SecAggError::TooFewSignatures {
                    have: 2,
                    threshold: 3,
                }
            },
        ),
        (
            "garbage",
            |f| {
                let mut signatures = sigs(f, &[1, 2], &[1, 2, 3, 4]);
                signatures.push((3, vec![0x55; 64]));
                unmask_request(&[1, 2, 3, 4], signatures)
            },
            |e| *e == SecAggError::BadConsistencySignature { index: 3 },
        ),
        (
            "another's key",
            |f| {
                let mut signatures = sigs(f, &[1, 2], &[1, 2, 3, 4]);
                signatures.push((3, f.consistency_signature(1, &[1, 2, 3, 4])));
                unmask_request(&[1, 2, 3, 4], signatures)
            },
            |e| *e == SecAggError::BadConsistencySignature { index: 3 },
        ),
        (
            "on another set",
            |f| {
                let mut signatures = sigs(f, &[1, 2], &[1, 2, 3, 4]);
                signatures.push((3, f.consistency_signature(3, &[1, 2, 3])));
                unmask_request(&[1, 2, 3, 4], signatures)
            },
            |e| *e == SecAggError::BadConsistencySignature { index: 3 },
        ),
        (
            "duplicated",
            |f| {
                let mut signatures = sigs(f, &[1, 2], &[1, 2, 3, 4]);
                signatures.push(signatures[1].clone());
                unmask_request(&[1, 2, 3, 4], signatures)
            },
            |e| matches!(e, SecAggError::Violation { from: 0, .. }),
        ),
        (
            "from a non-survivor",
            |f| {
                let mut signatures = sigs(f, &[1, 2, 3], &[1, 2, 3, 4]);
                signatures.push((9, f.consistency_signature(4, &[1, 2, 3, 4])));
                unmask_request(&[1, 2, 3, 4], signatures)
            },
            |e| matches!(e, SecAggError::Violation { from: 0, .. }),
        ),
        (
            "another survivor set",
            |f| unmask_request(&[1, 2, 3], sigs(f, &[1, 2, 3], &[1, 2, 3])),
            |e| *e == SecAggError::SurvivorsChanged,
        ),
        (
            "a survivor listed twice",
            |f| unmask_request(&[1, 2, 3, 4, 4], sigs(f, &[1, 2, 3, 4], &[1, 2, 3, 4])),
            |e| matches!(e, SecAggError::Violation { from: 0, .. }),
        ),
        (
            "another round",
            |f| {
                let mut request = unmask_request(&[1, 2, 3, 4], sigs(f, &[1, 2, 3], &[1, 2, 3, 4]));
                request.round = 2;
                request
            },
            |e| matches!(e, SecAggError::WrongRound { round: 2, .. }),
        ),
    ];
    for (seed, (name, request, expected)) in (30..).zip(cases) {
        let (federation, mut states) = signed_by_everyone(seed);
        let bad = request(&federation);
        match states[0].handle_unmask(&bad, &federation.verifier, &mut accept_all) {
            Err(e) if expected(&e) => {}
            other => panic!("{name}: {:?}", other.map(drop)),
        }
        let good = unmask_request(&all, sigs(&federation, &[1, 2, 3], &all));
        assert!(
            states[0]
                .handle_unmask(&good, &federation.verifier, &mut accept_all)
                .is_err(),
            "{name}: revealed after refusing"
        );
        // The same good request is answered by a participant that was not sent the bad one.
        let response = states[1]
            .handle_unmask(&good, &federation.verifier, &mut accept_all)
            .unwrap();
        assert_eq!(response.self_mask_shares.len(), 4, "{name}");
    }
}

/// The signatures of `signers` on `survivors`.
fn sigs(federation: &Federation, signers: &[u16], survivors: &[u16]) -> Vec<(u16, Vec<u8>)> {
    signers
        .iter()
        .map(|&i| (i, federation.consistency_signature(i, survivors)))
        .collect()
}

/// The node's policy sees the survivors' identities before signing and again before
/// revealing; a refusal at either step aborts with nothing signed or revealed.
#[test]
fn the_nodes_policy_sees_the_survivors_and_can_refuse_before_signing_or_revealing() {
    let mut federation = Federation::new(4, None, 8, 40);
    let (mut states, _, request) = federation.through_inputs();
    let refusal = || SecAggError::RefusedByPolicy {
        detail: "fewer than 3 other hospitals".into(),
    };
    let mut seen: Vec<Vec<String>> = Vec::new();
    let mut refuse = |identities: &[&str]| {
        seen.push(identities.iter().map(|s| s.to_string()).collect());
        Err(refusal())
    };
    let result = states[0].handle_consistency(&request, &federation.signers[0], &mut refuse);
    assert_eq!(result.map(drop), Err(refusal()));
    assert_eq!(
        seen,
        vec![vec!["hospital-1", "hospital-2", "hospital-3", "hospital-4"]]
    );
    // Nothing is signed afterwards.
    assert!(
        states[0]
            .handle_consistency(&request, &federation.signers[0], &mut accept_all)
            .is_err()
    );
    // At the unmask step: participant 2 signed, then its policy refuses to reveal.
    for (state, signer) in states.iter_mut().zip(&federation.signers).skip(1) {
        state
            .handle_consistency(&request, signer, &mut accept_all)
            .unwrap();
    }
    let all = [1, 2, 3, 4];
    let good = unmask_request(&all, sigs(&federation, &[2, 3, 4], &all));
    let mut calls = 0;
    let mut refuse_at_unmask = |identities: &[&str]| {
        calls += 1;
        assert_eq!(identities.len(), 4);
        Err(SecAggError::RefusedByPolicy {
            detail: "released before".into(),
        })
    };
    let result = states[1].handle_unmask(&good, &federation.verifier, &mut refuse_at_unmask);
    assert!(matches!(result, Err(SecAggError::RefusedByPolicy { .. })));
    assert_eq!(calls, 1);
    assert!(
        states[1]
            .handle_unmask(&good, &federation.verifier, &mut accept_all)
            .is_err()
    );
}

/// An honest coordinator checks each consistency signature against the signer's certificate
/// and leaves a bad one out, rather than relay it and have every participant refuse; the
/// signer's input stays in the sum (its self-mask is removed from the others' shares).
#[test]
fn the_coordinator_leaves_out_a_bad_consistency_signature_and_the_round_completes() {
    let mut federation = Federation::new(5, None, 32, 41);
    let (mut states, mut server, request) = federation.through_inputs();
    for (i, (state, signer)) in states.iter_mut().zip(&federation.signers).enumerate() {
        let index = i as u16 + 1;
        let mut signature = state
            .handle_consistency(&request, signer, &mut accept_all)
            .unwrap();
        if index == 5 {
            signature.signature[10] ^= 1;
            assert_eq!(
                server.handle_signature(index, signature, &federation.verifier),
                Err(SecAggError::BadConsistencySignature { index: 5 })
            );
        } else {
            server
                .handle_signature(index, signature.clone(), &federation.verifier)
                .unwrap();
            // Twice is refused.
            assert!(matches!(
                server.handle_signature(index, signature, &federation.verifier),
                Err(SecAggError::Violation { .. })
            ));
        }
    }
    let (mut server, unmask) = server.finish().unwrap();
    assert_eq!(server.participants(), vec![1, 2, 3, 4]);
    assert_eq!(unmask.survivors, vec![1, 2, 3, 4, 5]);
    for index in 1..=4u16 {
        let response = states[usize::from(index) - 1]
            .handle_unmask(&unmask, &federation.verifier, &mut accept_all)
            .unwrap();
        server.handle_response(index, response).unwrap();
    }
    let survivors = server.survivors();
    assert_eq!(
        server.finish().unwrap(),
        federation.expected_sum(&survivors)
    );
}

#[test]
fn distributed_dp_words_through_secure_aggregation_decode_to_the_survivors_gradient_sum() {
    use crate::distributed_dp::{DdpConfig, DdpParams};

    // Six hospitals, threshold 5: one drops after sharing, leaving exactly t survivors.
    let (n, d) = (6, 300);
    let mut federation = Federation::new(n, None, d, 21);
    let t = federation.params.threshold;
    assert_eq!(t, 5);
    let params = DdpParams::new(DdpConfig::new(1.0, d, n, t, 1.0)).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let mut gradient_sums = Vec::new();
    let mut examples = Vec::new();
    for i in 0..n {
        let mut node = params.node_sum();
        let mut sum = vec![0.0; d];
        let count = 20 + 3 * i;
        for e in 0..count {
            // Clipped gradients (norm at most 1), different at each node and example.
            let g: Vec<f64> = (0..d)
                .map(|j| ((i * 31 + e * 7 + j) as f64).cos() / (d as f64).sqrt())
                .collect();
            sum.iter_mut().zip(&g).for_each(|(s, x)| *s += x);
            node.add_example(&g, &mut rng).unwrap();
        }
        federation.inputs[i] = node.finish(&mut rng);
        gradient_sums.push(sum);
        examples.push(count);
    }
    let drops = [DropAfter::Nothing, DropAfter::Nothing, DropAfter::Shares];
    let (sum, survivors) = federation.run(&drops).unwrap();
    assert_eq!(survivors, vec![1, 2, 4, 5, 6]);
    let decoded = params.decode_sum(&sum, survivors.len()).unwrap();
    let summed_examples: usize = survivors
        .iter()
        .map(|&s| examples[usize::from(s) - 1])
        .sum();
    // Rounding moves each coordinate by less than one integer unit per example; the noise has
    // standard deviation √5·σ_share/γ, about z·C = 1: six of them bound it here.
    let bound = summed_examples as f64 / params.config().scale + 6.0 * params.noise_std_of_sum(5);
    let mut squared_error = 0.0;
    for j in 0..d {
        let truth: f64 = survivors
            .iter()
            .map(|&s| gradient_sums[usize::from(s) - 1][j])
            .sum();
        let off = decoded[j] - truth;
        assert!(off.abs() < bound, "coordinate {j}: {off}");
        squared_error += off * off;
    }
    // The error is the designed noise (rounding adds under 1% to it): its mean square over the
    // d coordinates is 5·σ_share²/γ², to within 5 standard errors of a sample variance,
    // 5·sqrt(2/d).
    let designed = params.noise_std_of_sum(5).powi(2);
    let observed = squared_error / d as f64;
    let tolerance = 5.0 * (2.0 / d as f64).sqrt();
    assert!(
        (observed / designed - 1.0).abs() < tolerance,
        "{observed} vs {designed}"
    );
}
