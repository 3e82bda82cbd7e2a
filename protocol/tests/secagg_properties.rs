//! Property tests of the secure-aggregation state machines: random consortium sizes, thresholds
//! and SecAgg+ neighbour counts, random inputs, random dropouts at each of the five phases and
//! random delivery order within each phase, with duplicated and wrong-round messages injected.
//!
//! Each case is checked against a small reference model of the protocol that works out, from the
//! dropouts alone, who is left after each phase and therefore what the round must end with: the
//! exact sum of the inputs of the participants whose masked input was received, or the specific
//! error (which phase fell below the threshold, or whose secret lacks shares). Never a wrong sum,
//! never a panic.

use std::collections::{BTreeMap, BTreeSet};

use medfed_protocol::secagg::{
    ConsistencyRequest, ExpectDirectory, ExpectKeys, MaskedInput, Participant, ParticipantState,
    PeerVerifier, RoundParams, SecAggError, Signer, UnmaskRequest,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use ring::digest;

/// When a participant stops answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dropout {
    /// Takes part to the end.
    Never,
    /// Never advertises keys.
    BeforeKeys,
    /// Advertises keys, then never sends shares.
    AfterKeys,
    /// Sends shares, then never sends its masked input.
    AfterShares,
    /// Sends its masked input, then never signs the survivor set (nor unmasks).
    AfterInput,
    /// Signs the survivor set, then never answers the unmask request.
    AfterSignature,
}

/// One random round.
#[derive(Clone, Debug)]
struct Scenario {
    n: usize,
    neighbours: Option<usize>,
    threshold: usize,
    inputs: Vec<Vec<u32>>,
    drops: Vec<Dropout>,
    /// Order in which the coordinator receives the participants' messages, per phase (positions
    /// 0..n).
    orders: [Vec<usize>; 5],
    /// Inject wrong-round, duplicated and unexpected messages.
    faults: bool,
    /// Seed of the participants' randomness and of the order of entries inside messages.
    seed: u64,
}

impl Scenario {
    fn params(&self) -> RoundParams {
        RoundParams {
            session: 0x5EC_A66,
            round: 11,
            participants: (1..=self.n)
                .map(|i| Participant {
                    index: i as u16,
                    identity: format!("hospital-{i}"),
                })
                .collect(),
            threshold: self.threshold,
            neighbours: self.neighbours,
            graph_seed: [self.seed as u8; 32],
            vector_len: self.inputs[0].len(),
            encoding_digest: [self.seed as u8 ^ 0xff; 32],
        }
    }

    fn drop(&self, index: u16) -> Dropout {
        self.drops[usize::from(index) - 1]
    }

    /// The exact sum of the inputs of `participants`, in Z(2^32).
    fn sum(&self, participants: &BTreeSet<u16>) -> Vec<u32> {
        let mut sum = vec![0u32; self.inputs[0].len()];
        for &index in participants {
            for (s, v) in sum.iter_mut().zip(&self.inputs[usize::from(index) - 1]) {
                *s = s.wrapping_add(*v);
            }
        }
        sum
    }
}

fn drop_strategy() -> impl Strategy<Value = Dropout> {
    prop_oneof![
        6 => Just(Dropout::Never),
        1 => Just(Dropout::BeforeKeys),
        1 => Just(Dropout::AfterKeys),
        1 => Just(Dropout::AfterShares),
        1 => Just(Dropout::AfterInput),
        1 => Just(Dropout::AfterSignature),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (3usize..=12)
        .prop_flat_map(|n| {
            // SecAgg+ degrees that give a sparse regular graph (k-regular on n nodes needs n·k
            // even), or None: everyone pairs with everyone.
            let mut degrees = vec![None];
            degrees.extend(
                (2..n.saturating_sub(1))
                    .filter(|k| k % 2 == 0 || n % 2 == 0)
                    .map(Some),
            );
            (Just(n), proptest::sample::select(degrees), 1usize..=6)
        })
        .prop_flat_map(|(n, neighbours, vector_len)| {
            let holders = match neighbours {
                Some(k) if k + 1 < n => k + 1,
                _ => n,
            };
            let order = || Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
            (
                Just(n),
                Just(neighbours),
                2..=holders,
                proptest::collection::vec(proptest::collection::vec(any::<u32>(), vector_len), n),
                proptest::collection::vec(drop_strategy(), n),
                [order(), order(), order(), order(), order()],
                any::<bool>(),
                any::<u64>(),
            )
        })
        .prop_map(
            |(n, neighbours, threshold, inputs, drops, orders, faults, seed)| Scenario {
                n,
                neighbours,
                threshold,
                inputs,
                drops,
                orders,
                faults,
                seed,
            },
        )
}

/// Signs with a keyed digest of the identity (the tests' stand-in for a certificate's key).
struct DigestSigner(String);

impl Signer for DigestSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(tag(&self.0, message))
    }
}

/// Accepts a signature only from the identity's own "certificate" (its name).
struct DigestVerifier;

impl PeerVerifier for DigestVerifier {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        certificate == identity.as_bytes() && signature == tag(identity, message)
    }
}

fn tag(identity: &str, message: &[u8]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(identity.as_bytes());
    ctx.update(&[0]);
    ctx.update(message);
    ctx.finish().as_ref().to_vec()
}

/// What the round must end with, worked out from the dropouts alone.
fn model(scenario: &Scenario, graph: &[Vec<u16>]) -> Result<(Vec<u32>, Vec<u16>), SecAggError> {
    let t = scenario.threshold;
    let below = |phase: &'static str, have: usize| SecAggError::BelowThreshold {
        phase,
        have,
        threshold: t,
    };
    let neighbours = |i: u16| &graph[usize::from(i) - 1];
    let all: BTreeSet<u16> = (1..=scenario.n as u16).collect();
    let u1: BTreeSet<u16> = all
        .iter()
        .copied()
        .filter(|&i| scenario.drop(i) != Dropout::BeforeKeys)
        .collect();
    if u1.len() < t {
        return Err(below("advertise keys", u1.len()));
    }
    // A participant with fewer than t − 1 neighbours in U1 refuses to share (and so drops).
    let u2: BTreeSet<u16> = u1
        .iter()
        .copied()
        .filter(|&i| scenario.drop(i) != Dropout::AfterKeys)
        .filter(|&i| neighbours(i).iter().filter(|j| u1.contains(j)).count() + 1 >= t)
        .collect();
    if u2.len() < t {
        return Err(below("share keys", u2.len()));
    }
    let u3: BTreeSet<u16> = u2
        .iter()
        .copied()
        .filter(|&i| scenario.drop(i) != Dropout::AfterShares)
        .collect();
    if u3.len() < t {
        return Err(below("masked input", u3.len()));
    }
    let u4: BTreeSet<u16> = u3
        .iter()
        .copied()
        .filter(|&i| scenario.drop(i) != Dropout::AfterInput)
        .collect();
    if u4.len() < t {
        return Err(below("consistency", u4.len()));
    }
    let u5: BTreeSet<u16> = u4
        .iter()
        .copied()
        .filter(|&i| scenario.drop(i) != Dropout::AfterSignature)
        .collect();
    if u5.len() < t {
        return Err(below("unmasking", u5.len()));
    }
    // The server rebuilds each survivor's self-mask seed (held by itself and its neighbours),
    // then each dropout's mask key (held by its neighbours), in index order.
    for &s in &u3 {
        let have = u5
            .iter()
            .filter(|&&j| j == s || neighbours(s).contains(&j))
            .count();
        if have < t {
            return Err(SecAggError::TooFewShares {
                index: s,
                have,
                threshold: t,
            });
        }
    }
    for &d in u2.difference(&u3) {
        let have = u5.iter().filter(|j| neighbours(d).contains(j)).count();
        if have < t {
            return Err(SecAggError::TooFewShares {
                index: d,
                have,
                threshold: t,
            });
        }
    }
    Ok((scenario.sum(&u3), u3.into_iter().collect()))
}

/// Whether `result` is a refusal of a message from another round.
fn wrong_round<T: std::fmt::Debug>(result: Result<T, SecAggError>) -> bool {
    matches!(result, Err(SecAggError::WrongRound { .. }))
}

/// Whether `result` is a refusal naming `from` as the offender.
fn violation_by<T: std::fmt::Debug>(result: Result<T, SecAggError>, from: u16) -> bool {
    matches!(result, Err(SecAggError::Violation { from: f, .. }) if f == from)
}

/// Drives one round through the real state machines, delivering messages in the scenario's
/// orders and injecting faults. Returns the server's result; panics (failing the property) on
/// any behaviour the protocol forbids.
fn run(scenario: &Scenario) -> Result<(Vec<u32>, Vec<u16>), SecAggError> {
    let params = scenario.params();
    let mut rng = ChaCha20Rng::seed_from_u64(scenario.seed);
    let index_at = |position: usize| position as u16 + 1;
    let certificate = |index: u16| format!("hospital-{index}").into_bytes();

    // Phase 1: keys.
    let mut server = ExpectKeys::new(params.clone()).expect("valid parameters");
    let mut states: BTreeMap<u16, ParticipantState> = BTreeMap::new();
    let mut first = true;
    for &position in &scenario.orders[0] {
        let index = index_at(position);
        if scenario.drop(index) == Dropout::BeforeKeys {
            continue;
        }
        let signer = DigestSigner(format!("hospital-{index}"));
        let (state, keys) = ExpectDirectory::new(
            params.clone(),
            index,
            scenario.inputs[position].clone(),
            &signer,
            &mut rng,
        )
        .expect("a participant starts");
        states.insert(index, ParticipantState::Directory(state));
        if scenario.faults && first {
            let mut stale = keys.clone();
            stale.round -= 1;
            assert!(wrong_round(server.handle_keys(
                index,
                stale,
                certificate(index)
            )));
            let mut foreign = keys.clone();
            foreign.session ^= 1;
            assert!(wrong_round(server.handle_keys(
                index,
                foreign,
                certificate(index)
            )));
        }
        server
            .handle_keys(index, keys.clone(), certificate(index))
            .expect("honest keys are accepted");
        if scenario.faults && first {
            assert!(violation_by(
                server.handle_keys(index, keys, certificate(index)),
                index
            ));
            first = false;
        }
    }
    let (mut server, mut directory) = server.finish()?;
    directory.entries.shuffle(&mut rng);

    // Phase 2: shares.
    let mut first = true;
    for &position in &scenario.orders[1] {
        let index = index_at(position);
        let Some(state) = states.get_mut(&index) else {
            continue;
        };
        if scenario.drop(index) == Dropout::AfterKeys {
            if scenario.faults {
                let mut stale = directory.clone();
                stale.round += 1;
                assert!(wrong_round(state.handle_directory(
                    &stale,
                    &DigestVerifier,
                    &mut rng
                )));
            }
            continue;
        }
        let package = match state.handle_directory(&directory, &DigestVerifier, &mut rng) {
            Ok(package) => package,
            // Too few of its neighbours advertised keys: it refuses to share (the model expects
            // exactly this).
            Err(SecAggError::BelowThreshold {
                phase: "share keys",
                ..
            }) => continue,
            Err(e) => panic!("participant {index} refused an honest directory: {e}"),
        };
        if scenario.faults && first {
            let mut stale = package.clone();
            stale.round += 1;
            assert!(wrong_round(server.handle_package(index, stale)));
        }
        server
            .handle_package(index, package.clone())
            .expect("honest shares are accepted");
        if scenario.faults && first {
            assert!(violation_by(server.handle_package(index, package), index));
            first = false;
        }
    }
    let (mut server, mut deliveries) = server.finish()?;
    let sharers: BTreeSet<u16> = deliveries.keys().copied().collect();

    // Phase 3: masked inputs.
    let mut first = true;
    for &position in &scenario.orders[2] {
        let index = index_at(position);
        let Some(delivery) = deliveries.get_mut(&index) else {
            if scenario.faults {
                // Someone outside U2 cannot slip an input in.
                let stranger = MaskedInput {
                    session: params.session,
                    round: params.round,
                    values: vec![0; params.vector_len],
                };
                assert!(violation_by(server.handle_input(index, &stranger), index));
            }
            continue;
        };
        delivery.shares.shuffle(&mut rng);
        let state = states.get_mut(&index).expect("a sharer has a state");
        if scenario.drop(index) == Dropout::AfterShares {
            if scenario.faults {
                let mut stale = delivery.clone();
                stale.round += 1;
                assert!(wrong_round(state.handle_delivery(&stale)));
            }
            continue;
        }
        let input = state
            .handle_delivery(delivery)
            .expect("an honest delivery is answered");
        assert_eq!(input.values.len(), params.vector_len);
        if scenario.faults && first {
            let mut stale = input.clone();
            stale.round += 1;
            assert!(wrong_round(server.handle_input(index, &stale)));
        }
        server
            .handle_input(index, &input)
            .expect("an honest input is accepted");
        if scenario.faults && first {
            assert!(violation_by(server.handle_input(index, &input), index));
            first = false;
        }
    }
    let (mut server, consistency) = server.finish()?;
    let survivors: BTreeSet<u16> = consistency.survivors.iter().copied().collect();
    assert!(survivors.is_subset(&sharers));

    // Phase 4: signatures on the survivor set.
    let mut first = true;
    for &position in &scenario.orders[3] {
        let index = index_at(position);
        if !survivors.contains(&index) {
            continue;
        }
        let state = states.get_mut(&index).expect("a survivor has a state");
        if scenario.drop(index) == Dropout::AfterInput {
            if scenario.faults {
                let mut stale = consistency.clone();
                stale.round += 1;
                assert!(wrong_round(state.handle_consistency(
                    &stale,
                    &DigestSigner(format!("hospital-{index}")),
                    &mut accept_all
                )));
            }
            continue;
        }
        let signature = state
            .handle_consistency(
                &consistency,
                &DigestSigner(format!("hospital-{index}")),
                &mut accept_all,
            )
            .expect("an honest consistency request is signed");
        if scenario.drop(index) == Dropout::AfterSignature && !scenario.faults {
            // A second request — even for another set — is refused: one signature a round. (A
            // refusal aborts the participant's round, so only one that will not unmask, nor be
            // sent a stale request in phase 5, is asked.)
            let mut alone = consistency.clone();
            alone.survivors = vec![index];
            assert!(violation_by(
                state.handle_consistency(
                    &alone,
                    &DigestSigner(format!("hospital-{index}")),
                    &mut accept_all
                ),
                0
            ));
        }
        if scenario.faults && first {
            let mut stale = signature.clone();
            stale.round += 1;
            assert!(wrong_round(server.handle_signature(
                index,
                stale,
                &DigestVerifier
            )));
            let mut forged = signature.clone();
            forged.signature[0] ^= 1;
            assert_eq!(
                server.handle_signature(index, forged, &DigestVerifier),
                Err(SecAggError::BadConsistencySignature { index })
            );
        }
        server
            .handle_signature(index, signature.clone(), &DigestVerifier)
            .expect("an honest signature is accepted");
        if scenario.faults && first {
            assert!(violation_by(
                server.handle_signature(index, signature, &DigestVerifier),
                index
            ));
            first = false;
        }
    }
    let (mut server, request) = server.finish()?;
    assert_eq!(request.survivors, consistency.survivors);
    let signers: BTreeSet<u16> = request.signatures.iter().map(|(i, _)| *i).collect();

    // Phase 5: unmasking.
    let mut first = true;
    for &position in &scenario.orders[4] {
        let index = index_at(position);
        if !signers.contains(&index) {
            continue;
        }
        let state = states.get_mut(&index).expect("a signer has a state");
        if scenario.drop(index) == Dropout::AfterSignature {
            if scenario.faults {
                let mut stale = request.clone();
                stale.round += 1;
                assert!(wrong_round(state.handle_unmask(
                    &stale,
                    &DigestVerifier,
                    &mut accept_all
                )));
            }
            continue;
        }
        let response = state
            .handle_unmask(&request, &DigestVerifier, &mut accept_all)
            .expect("an honest unmask request is answered");
        // Never both kinds of share of one peer, and the right kind for each.
        let self_masks: BTreeSet<u16> = response.self_mask_shares.iter().map(|(p, _)| *p).collect();
        let mask_keys: BTreeSet<u16> = response.mask_key_shares.iter().map(|(p, _)| *p).collect();
        assert!(
            self_masks.is_disjoint(&mask_keys),
            "participant {index} revealed both shares of {:?}",
            self_masks.intersection(&mask_keys).collect::<Vec<_>>()
        );
        assert!(self_masks.is_subset(&survivors));
        assert!(mask_keys.is_disjoint(&survivors));
        // A second request — even one calling everyone a dropout — is refused.
        let mut everyone_dropped = request.clone();
        everyone_dropped.survivors = vec![index];
        assert!(violation_by(
            state.handle_unmask(&everyone_dropped, &DigestVerifier, &mut accept_all),
            0
        ));
        if scenario.faults && first {
            let mut stale = response.clone();
            stale.round += 1;
            assert!(wrong_round(server.handle_response(index, stale)));
        }
        server
            .handle_response(index, response.clone())
            .expect("an honest response is accepted");
        if scenario.faults && first {
            assert!(violation_by(server.handle_response(index, response), index));
            first = false;
        }
    }
    let survivors = server.survivors();
    server.finish().map(|sum| (sum, survivors))
}

/// The harness's node policy: every survivor set is acceptable.
fn accept_all(_: &[&str]) -> Result<(), SecAggError> {
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The round ends exactly as the model says: the exact sum of U3's inputs, or the specific
    /// error; never a wrong sum, never a panic.
    #[test]
    fn secagg_round_gives_the_exact_sum_or_the_specific_error(scenario in scenario()) {
        let graph = scenario.params().graph().expect("a valid graph");
        let expected = model(&scenario, &graph);
        let got = run(&scenario);
        prop_assert_eq!(got, expected);
    }
}

/// Survivor lists that name a participant twice are refused, not answered: in the consistency
/// request and in the unmask request.
#[test]
fn an_unmask_request_listing_a_survivor_twice_is_refused() {
    let scenario = Scenario {
        n: 3,
        neighbours: None,
        threshold: 2,
        inputs: vec![vec![1, 2], vec![3, 4], vec![5, 6]],
        drops: vec![Dropout::Never; 3],
        orders: [
            vec![0, 1, 2],
            vec![0, 1, 2],
            vec![0, 1, 2],
            vec![0, 1, 2],
            vec![0, 1, 2],
        ],
        faults: false,
        seed: 1,
    };
    let params = scenario.params();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut server = ExpectKeys::new(params.clone()).unwrap();
    let mut states = Vec::new();
    for index in 1..=3u16 {
        let signer = DigestSigner(format!("hospital-{index}"));
        let (state, keys) = ExpectDirectory::new(
            params.clone(),
            index,
            scenario.inputs[usize::from(index) - 1].clone(),
            &signer,
            &mut rng,
        )
        .unwrap();
        server
            .handle_keys(index, keys, format!("hospital-{index}").into_bytes())
            .unwrap();
        states.push(ParticipantState::Directory(state));
    }
    let (mut server, directory) = server.finish().unwrap();
    for (i, state) in states.iter_mut().enumerate() {
        let package = state
            .handle_directory(&directory, &DigestVerifier, &mut rng)
            .unwrap();
        server.handle_package(i as u16 + 1, package).unwrap();
    }
    let (_, deliveries) = server.finish().unwrap();
    states[0].handle_delivery(&deliveries[&1]).unwrap();
    states[1].handle_delivery(&deliveries[&2]).unwrap();
    let request = ConsistencyRequest {
        session: params.session,
        round: params.round,
        survivors: vec![1, 2, 2],
    };
    let signer = DigestSigner("hospital-1".into());
    assert!(violation_by(
        states[0].handle_consistency(&request, &signer, &mut accept_all),
        0
    ));
    // Nor is an unmask request listing one twice, even for the set the participant signed.
    let request = ConsistencyRequest {
        session: params.session,
        round: params.round,
        survivors: vec![1, 2],
    };
    let signer = DigestSigner("hospital-2".into());
    states[1]
        .handle_consistency(&request, &signer, &mut accept_all)
        .unwrap();
    let signed_bytes = medfed_protocol::secagg::survivors_signed_bytes(
        &params.digest(),
        &[1, 2].into_iter().collect(),
    );
    let unmask = UnmaskRequest {
        session: params.session,
        round: params.round,
        survivors: vec![1, 2, 2],
        signatures: vec![
            (1, tag("hospital-1", &signed_bytes)),
            (2, tag("hospital-2", &signed_bytes)),
        ],
    };
    assert!(violation_by(
        states[1].handle_unmask(&unmask, &DigestVerifier, &mut accept_all),
        0
    ));
}
