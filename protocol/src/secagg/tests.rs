//! The secure-aggregation state machines driven in memory: a `Federation` of one server and n
//! participants, with dropouts injected after any phase and a coordinator that misbehaves.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::*;

/// Signs with a real Ed25519 key (the tests' stand-in for a certificate's key).
struct TestSigner(Ed25519KeyPair);

impl Signer for TestSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(self.0.sign(message).as_ref().to_vec())
    }
}

/// Verifies against the public key carried as the "certificate", and checks it belongs to the
/// identity, as a certificate's subject would.
struct TestVerifier(BTreeMap<String, Vec<u8>>);

impl PeerVerifier for TestVerifier {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.0.get(identity).is_some_and(|key| key == certificate)
            && UnparsedPublicKey::new(&ED25519, certificate)
                .verify(message, signature)
                .is_ok()
    }
}

/// When a participant stops answering.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DropAfter {
    Nothing,
    Start,
    Keys,
    Shares,
    Input,
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
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
            keys.insert(p.identity.clone(), pair.public_key().as_ref().to_vec());
            signers.push(TestSigner(pair));
        }
        let mut params = RoundParams {
            session: 77,
            round: 3,
            participants,
            threshold: 1,
            neighbours,
            graph_seed: [9; 32],
            vector_len,
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
        self.signers[usize::from(index) - 1]
            .0
            .public_key()
            .as_ref()
            .to_vec()
    }

    /// Runs a whole round with honest parties; `drops[i]` says when participant i+1 stops.
    fn run(&mut self, drops: &[DropAfter]) -> Result<(Vec<u32>, Vec<u16>), SecAggError> {
        self.run_with(drops, |_| {})
    }

    /// As [`Self::run`], letting `tamper` modify the key directory (a malicious coordinator).
    fn run_with(
        &mut self,
        drops: &[DropAfter],
        tamper: impl FnOnce(&mut KeyDirectory),
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
        let (mut server, request) = server.finish()?;
        let survivors = server.survivors();
        for index in request.survivors.clone() {
            if drop(usize::from(index) - 1) == DropAfter::Input {
                continue;
            }
            let response = states.get_mut(&index).unwrap().handle_unmask(&request)?;
            for (peer, _) in &response.self_mask_shares {
                assert!(
                    !response.mask_key_shares.iter().any(|(p, _)| p == peer),
                    "both shares of {peer}"
                );
            }
            server.handle_response(index, response)?;
        }
        Ok((server.finish()?, survivors))
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
        .run_with(&[], |directory| {
            directory.entries[1].keys.mask_public = [42; 32]
        })
        .unwrap_err();
    assert!(
        matches!(err, SecAggError::KeySubstituted { index: 2, .. }),
        "{err}"
    );
    // Substituting the certificate too does not help: it must belong to the identity.
    let mut federation = Federation::new(4, None, 8, 6);
    let forged = federation.certificate(1);
    let err = federation
        .run_with(&[], move |d| d.entries[2].certificate = forged)
        .unwrap_err();
    assert!(
        matches!(err, SecAggError::KeySubstituted { index: 3, .. }),
        "{err}"
    );
}

#[test]
fn a_participant_never_releases_both_shares_of_a_peer() {
    let mut federation = Federation::new(4, None, 8, 7);
    let params = federation.params.clone();
    let mut server = ExpectKeys::new(params.clone()).unwrap();
    let mut states = Vec::new();
    for i in 0..4u16 {
        let (state, keys) = ExpectDirectory::new(
            params.clone(),
            i + 1,
            federation.inputs[usize::from(i)].clone(),
            &federation.signers[usize::from(i)],
            &mut federation.rng,
        )
        .unwrap();
        server
            .handle_keys(i + 1, keys, federation.certificate(i + 1))
            .unwrap();
        states.push(ParticipantState::Directory(state));
    }
    let (mut server, directory) = server.finish().unwrap();
    for (i, state) in states.iter_mut().enumerate() {
        let package = state
            .handle_directory(&directory, &federation.verifier, &mut federation.rng)
            .unwrap();
        server.handle_package(i as u16 + 1, package).unwrap();
    }
    let (_, deliveries) = server.finish().unwrap();
    for (i, state) in states.iter_mut().enumerate() {
        state.handle_delivery(&deliveries[&(i as u16 + 1)]).unwrap();
    }
    // A dishonest coordinator first calls participant 4 a dropout, then a survivor.
    let as_dropout = UnmaskRequest {
        session: 77,
        round: 3,
        survivors: vec![1, 2, 3],
    };
    let as_survivor = UnmaskRequest {
        session: 77,
        round: 3,
        survivors: vec![1, 2, 3, 4],
    };
    let first = states[0].handle_unmask(&as_dropout).unwrap();
    assert!(first.mask_key_shares.iter().any(|(p, _)| *p == 4));
    assert!(!first.self_mask_shares.iter().any(|(p, _)| *p == 4));
    let second = states[0].handle_unmask(&as_survivor);
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
