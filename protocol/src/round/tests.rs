//! The round engine driven in memory: a consortium of simulated nodes (honest ones run the real
//! secure-aggregation participant) answers every message the engine sends, and each test checks
//! the sum, who is in it, and the typed reason for each node left out — no sockets, no clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::manifest::{FractionalBitsRule, SecureAggregationPlan, ThresholdRule};
use crate::messages::{
    Contribution, ContributionKind, DeclineReason, Declined, Message, PlainFigures, PrivacySpent,
    RefusalReason, Refused, RoundKeys, StatsRequest,
};
use crate::secagg::encoding::{BlockEncoding, VectorEncoding};
use crate::secagg::test_keys::{TestSigner, TestVerifier};
use crate::secagg::{ExpectDirectory, MaskedInput, ParticipantState, SecAggError};

const SESSION: u64 = 41;
const LEN: usize = 3;

/// How a simulated node answers.
#[derive(Clone, Debug, PartialEq)]
enum Behaviour {
    Honest,
    /// Declines the request.
    Declines(DeclineReason),
    /// Refuses the request.
    Refuses,
    /// Its connection fails before it answers.
    Disconnects,
    /// Its stream carries bytes that are not a frame.
    SendsGarbage,
    /// Stops answering from this phase's request on.
    SilentFrom(Phase),
    /// Advertises keys for the next round.
    KeysForAnotherRound,
    /// Answers the key directory with a masked input (the next phase's message).
    InputForShares,
    /// Flips a byte of the share it sends participant `victim`.
    CorruptsShareFor(u16),
    /// In the clear: sends statistics as f32.
    SendsSingle,
    /// In the clear: a contribution for another round.
    ContributesToAnotherRound,
}

struct Node {
    identity: String,
    signer: TestSigner,
    behaviour: Behaviour,
    figures: Vec<f64>,
    state: ParticipantState,
}

struct Consortium {
    nodes: Vec<Node>,
    verifier: Arc<TestVerifier>,
    rng: ChaCha20Rng,
}

fn accept_all(_: &[&str]) -> Result<(), SecAggError> {
    Ok(())
}

impl Consortium {
    fn new(behaviours: &[Behaviour]) -> Self {
        let mut keys = BTreeMap::new();
        let nodes: Vec<Node> = behaviours
            .iter()
            .enumerate()
            .map(|(i, behaviour)| {
                let identity = format!("hospital-{}", i + 1);
                let signer = TestSigner::from_seed(&[i as u8 + 1; 32]);
                keys.insert(identity.clone(), signer.certificate());
                let k = (i + 1) as f64;
                Node {
                    identity,
                    signer,
                    behaviour: behaviour.clone(),
                    figures: vec![k, 10.0 * k, 100.0 * k],
                    state: ParticipantState::Done,
                }
            })
            .collect();
        Self {
            nodes,
            verifier: Arc::new(TestVerifier(keys)),
            rng: ChaCha20Rng::seed_from_u64(5),
        }
    }

    fn honest(n: usize) -> Self {
        Self::new(&vec![Behaviour::Honest; n])
    }

    /// A statistics collection (round 0) from every node.
    fn plan(&self, secure: bool, min_nodes: usize) -> CollectionPlan {
        CollectionPlan {
            request: Request::Stats(StatsRequest {
                session: SESSION,
                round: 0,
                secure_aggregation: None,
            }),
            layout: FigureLayout::Stats { len: LEN },
            min_nodes,
            nodes: self
                .nodes
                .iter()
                .map(|node| Asked {
                    identity: node.identity.clone(),
                    certificate: node.signer.certificate(),
                })
                .collect(),
            left_out: Vec::new(),
            secure: secure.then(|| SecurePlan {
                settings: SecureAggregationPlan {
                    neighbours: None,
                    // Three shares, so every test may lose up to all but three nodes.
                    threshold: ThresholdRule::Fixed(3),
                    update_clip: 1.0,
                    fractional_bits: FractionalBitsRule::Fit,
                    upload_bits: None,
                },
                manifest_digest: [3; 32],
                graph_seed: [4; 32],
                verifier: self.verifier.clone(),
            }),
        }
    }

    /// Runs a collection to its end; the phases that ended on the way.
    fn run(&mut self, plan: CollectionPlan) -> (Outcome, Vec<Phase>) {
        self.run_with(plan, None)
    }

    /// [`Self::run`], with each masked input sent in pieces of `words` words, as nodes do;
    /// node `cut`'s stream fails after its first piece.
    fn run_in_pieces(
        &mut self,
        plan: CollectionPlan,
        words: usize,
        cut: Option<u16>,
    ) -> (Outcome, Vec<Phase>) {
        self.run_with(plan, Some((words, cut)))
    }

    /// Runs a collection to its end, masked inputs whole or, with `pieces`, in pieces of so
    /// many words, the stream of the node named failing after its first.
    fn run_with(
        &mut self,
        plan: CollectionPlan,
        pieces: Option<(usize, Option<u16>)>,
    ) -> (Outcome, Vec<Phase>) {
        let (mut collection, mut progress) = Collection::start(plan);
        let mut ended = Vec::new();
        loop {
            match progress {
                Progress::Done(outcome) => return (outcome, ended),
                Progress::Send {
                    ended: phase,
                    sends,
                } => {
                    ended.extend(phase);
                    progress = Progress::Waiting;
                    for send in &sends {
                        let Some(answer) = self.answer(send) else {
                            continue;
                        };
                        progress = match (answer, pieces) {
                            (Ok(Message::SecAggInput(input)), Some((words, cut))) => {
                                let mut last = Progress::Waiting;
                                for chunk in input.chunks(words) {
                                    last = if send.index % 2 == 0 {
                                        // As the coordinator hands pieces over: read in place
                                        // from their frames' bytes.
                                        let message = Message::SecAggInputChunk(chunk);
                                        let framed = crate::codec::frame(&message).unwrap();
                                        let body = bytes::Bytes::from(framed).slice(4..);
                                        let piece = crate::codec::InputPieceFrame::parse(body)
                                            .unwrap()
                                            .unwrap();
                                        collection.handle_input_chunk(send.index, &piece)
                                    } else {
                                        collection.handle_input_chunk(send.index, &chunk)
                                    };
                                    if cut == Some(send.index) {
                                        let lost = LeftOut::Connection {
                                            detail: "reset".into(),
                                        };
                                        last = collection.handle_answer(send.index, Err(lost));
                                        break;
                                    }
                                }
                                last
                            }
                            (answer, _) => collection.handle_answer(send.index, answer),
                        };
                        if !matches!(progress, Progress::Waiting) {
                            break;
                        }
                    }
                }
                // Whoever stayed silent is timed out.
                Progress::Waiting => progress = collection.handle_deadline(),
            }
        }
    }

    /// Node `send.index`'s answer; `None` when it stays silent.
    fn answer(&mut self, send: &Outgoing) -> Option<Result<Message, LeftOut>> {
        let me = send.index;
        let verifier = self.verifier.clone();
        let node = &mut self.nodes[usize::from(me) - 1];
        let phase = match &send.message {
            Message::StatsRequest(_) => Phase::Keys,
            Message::SecAggDirectory(_) => Phase::Shares,
            Message::SecAggDelivery(_) => Phase::Inputs,
            Message::SecAggConsistency(_) => Phase::Consistency,
            _ => Phase::Unmask,
        };
        let round = send.message.round().unwrap_or(0);
        match &node.behaviour {
            Behaviour::SilentFrom(from) if *from as u8 <= phase as u8 => return None,
            Behaviour::Disconnects => {
                return Some(Err(LeftOut::Connection {
                    detail: "closed by peer".into(),
                }));
            }
            Behaviour::SendsGarbage => {
                return Some(Err(LeftOut::Framing {
                    detail: "malformed message".into(),
                }));
            }
            Behaviour::Declines(reason) => {
                return Some(Ok(Message::Declined(Declined {
                    session: SESSION,
                    round,
                    reason: reason.clone(),
                })));
            }
            Behaviour::Refuses => return Some(Ok(refusal(round, unexpected()))),
            _ => {}
        }
        let answer = match &send.message {
            Message::StatsRequest(StatsRequest {
                secure_aggregation: None,
                ..
            }) => Ok(Message::Contribution(Contribution {
                session: SESSION,
                round: if node.behaviour == Behaviour::ContributesToAnotherRound {
                    round + 1
                } else {
                    round
                },
                kind: ContributionKind::Stats,
                values: if node.behaviour == Behaviour::SendsSingle {
                    PlainFigures::Single(node.figures.iter().map(|&v| v as f32).collect())
                } else {
                    PlainFigures::Double(node.figures.clone())
                },
                privacy: None,
            })),
            Message::StatsRequest(StatsRequest {
                secure_aggregation: Some(setup),
                ..
            }) => {
                let encoding = VectorEncoding::new(vec![(LEN, BlockEncoding::Wide)]);
                let input = encoding.encode(&node.figures, &mut self.rng).unwrap();
                ExpectDirectory::new(setup.params.clone(), me, input, &node.signer, &mut self.rng)
                    .map(|(state, mut keys)| {
                        node.state = ParticipantState::Directory(state);
                        if node.behaviour == Behaviour::KeysForAnotherRound {
                            keys.round += 1;
                        }
                        Message::SecAggKeys(RoundKeys {
                            keys,
                            privacy: Some(PrivacySpent {
                                epsilon: f64::from(me),
                                delta: 1e-5,
                            }),
                        })
                    })
            }
            Message::SecAggDirectory(directory) => {
                if node.behaviour == Behaviour::InputForShares {
                    return Some(Ok(Message::SecAggInput(MaskedInput {
                        session: SESSION,
                        round,
                        values: vec![0; LEN],
                    })));
                }
                node.state
                    .handle_directory(directory, verifier.as_ref(), &mut self.rng)
                    .map(|mut package| {
                        if let Behaviour::CorruptsShareFor(victim) = node.behaviour {
                            for share in &mut package.shares {
                                if share.to == victim {
                                    share.ciphertext[0] ^= 1;
                                }
                            }
                        }
                        Message::SecAggShares(package)
                    })
            }
            Message::SecAggDelivery(delivery) => match node.state.handle_delivery(delivery) {
                Err(SecAggError::ShareAuthentication { from }) => {
                    Ok(refusal(round, RefusalReason::ShareAuthentication { from }))
                }
                other => other.map(Message::SecAggInput),
            },
            Message::SecAggConsistency(request) => node
                .state
                .handle_consistency(request, &node.signer, &mut accept_all)
                .map(Message::SecAggSignature),
            Message::SecAggUnmask(request) => node
                .state
                .handle_unmask(request, verifier.as_ref(), &mut accept_all)
                .map(Message::SecAggUnmaskShares),
            other => panic!("the engine sent a {}", other.kind()),
        };
        Some(Ok(
            answer.unwrap_or_else(|e| panic!("{}: {e}", node.identity))
        ))
    }

    /// The figures of `participants` (numbered from 1), summed.
    fn sum_of(&self, participants: &[usize]) -> Vec<f64> {
        let mut sum = vec![0.0; LEN];
        for p in participants {
            for (s, v) in sum.iter_mut().zip(&self.nodes[p - 1].figures) {
                *s += v;
            }
        }
        sum
    }
}

fn unexpected() -> RefusalReason {
    RefusalReason::UnexpectedMessage {
        got: "stats_request".into(),
        expected: "nothing".into(),
    }
}

fn refusal(round: u64, reason: RefusalReason) -> Message {
    Message::Refused(Refused {
        session: SESSION,
        round,
        reason,
    })
}

/// The names of participants `indices`, sorted as a sum's participants are.
fn names(indices: &[usize]) -> Vec<String> {
    let mut names: Vec<String> = indices.iter().map(|i| format!("hospital-{i}")).collect();
    names.sort();
    names
}

/// Why `who` was left out.
fn why<'a>(gathered: &'a Gathered, who: &str) -> &'a LeftOut {
    gathered
        .dropped
        .iter()
        .find(|(name, _)| name == who)
        .map(|(_, why)| why)
        .unwrap_or_else(|| panic!("{who} not left out: {:?}", gathered.dropped))
}

#[test]
fn an_honest_secure_collection_passes_every_phase_and_unmasks_the_exact_sum() {
    let mut consortium = Consortium::honest(4);
    let (outcome, phases) = consortium.run(consortium.plan(true, 3));
    let gathered = outcome.result.unwrap();
    assert_eq!(
        phases,
        [
            Phase::Keys,
            Phase::Shares,
            Phase::Inputs,
            Phase::Consistency
        ]
    );
    assert_eq!(gathered.sum.to_vec(), consortium.sum_of(&[1, 2, 3, 4]));
    assert_eq!(gathered.participants, names(&[1, 2, 3, 4]));
    assert!(gathered.dropped.is_empty());
    assert!(outcome.inputs_received && outcome.accused.is_empty());
    // Each node's declared privacy is recorded as it sent it.
    let declared: Vec<f64> = gathered.privacy.iter().map(|p| p.epsilon).collect();
    assert_eq!(declared, [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn a_plain_collection_sums_in_the_clear_without_phases() {
    let mut consortium = Consortium::honest(3);
    let (outcome, phases) = consortium.run(consortium.plan(false, 3));
    let gathered = outcome.result.unwrap();
    assert!(phases.is_empty());
    assert_eq!(gathered.sum.to_vec(), consortium.sum_of(&[1, 2, 3]));
    assert_eq!(gathered.participants, names(&[1, 2, 3]));
}

#[test]
fn a_node_silent_after_sending_its_input_is_timed_out_and_its_masks_removed() {
    for phase in [
        Phase::Keys,
        Phase::Shares,
        Phase::Inputs,
        Phase::Consistency,
    ] {
        let mut behaviours = vec![Behaviour::Honest; 5];
        behaviours[1] = Behaviour::SilentFrom(phase);
        let mut consortium = Consortium::new(&behaviours);
        let (outcome, _) = consortium.run(consortium.plan(true, 3));
        let gathered = outcome.result.unwrap();
        assert_eq!(
            *why(&gathered, "hospital-2"),
            LeftOut::Deadline,
            "{phase:?}"
        );
        // Silent from the consistency round on, its input is in the sum (it was sent); it is
        // summed over the phase-3 survivors whatever happens after.
        let summed: &[usize] = if phase == Phase::Consistency {
            &[1, 2, 3, 4, 5]
        } else {
            &[1, 3, 4, 5]
        };
        assert_eq!(
            gathered.sum.to_vec(),
            consortium.sum_of(summed),
            "{phase:?}"
        );
        assert_eq!(gathered.participants, names(summed), "{phase:?}");
    }
}

#[test]
fn every_kind_of_bad_answer_leaves_its_node_out_with_a_typed_reason() {
    let mut consortium = Consortium::new(&[
        Behaviour::Honest,
        Behaviour::Declines(DeclineReason::LocalFailure),
        Behaviour::Refuses,
        Behaviour::Disconnects,
        Behaviour::KeysForAnotherRound,
        Behaviour::InputForShares,
        Behaviour::SendsGarbage,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
    ]);
    let (outcome, _) = consortium.run(consortium.plan(true, 3));
    let gathered = outcome.result.unwrap();
    assert_eq!(
        *why(&gathered, "hospital-2"),
        LeftOut::Declined {
            reason: DeclineReason::LocalFailure
        }
    );
    assert_eq!(
        *why(&gathered, "hospital-3"),
        LeftOut::Refused {
            reason: unexpected()
        }
    );
    assert!(matches!(
        why(&gathered, "hospital-4"),
        LeftOut::Connection { .. }
    ));
    assert!(
        matches!(
            why(&gathered, "hospital-5"),
            LeftOut::SecureAggregation { .. }
        ),
        "{:?}",
        gathered.dropped
    );
    assert_eq!(
        *why(&gathered, "hospital-6"),
        LeftOut::Unexpected {
            got: "secagg_input".into(),
            expected: "secagg_shares".into()
        }
    );
    assert!(matches!(
        why(&gathered, "hospital-7"),
        LeftOut::Framing { .. }
    ));
    assert_eq!(gathered.sum.to_vec(), consortium.sum_of(&[1, 8, 9, 10]));
    assert_eq!(gathered.participants, names(&[1, 8, 9, 10]));
    assert!(gathered.budget_spent.is_empty());
}

#[test]
fn a_share_that_fails_authentication_leaves_its_sender_out_of_the_sum_and_the_retries() {
    // Hospital-2 corrupts its share for hospital-1, which refuses the delivery naming it.
    let mut behaviours = vec![Behaviour::Honest; 5];
    behaviours[1] = Behaviour::CorruptsShareFor(1);
    let mut consortium = Consortium::new(&behaviours);
    let (outcome, _) = consortium.run(consortium.plan(true, 3));
    let accused = LeftOut::ShareAuthentication {
        peer: "hospital-1".into(),
    };
    assert_eq!(
        outcome.accused,
        [("hospital-2".to_owned(), accused.clone())]
    );
    let gathered = outcome.result.unwrap();
    assert_eq!(*why(&gathered, "hospital-2"), accused);
    assert_eq!(
        *why(&gathered, "hospital-1"),
        LeftOut::Refused {
            reason: RefusalReason::ShareAuthentication { from: 2 }
        }
    );
    // Never a wrong sum: both are out, their masks removed.
    assert_eq!(gathered.sum.to_vec(), consortium.sum_of(&[3, 4, 5]));

    // The round's next attempt leaves the accused out, and says why.
    let mut exclusions = Exclusions::default();
    for (who, why) in outcome.accused {
        exclusions.exclude(0, &who, why);
    }
    assert!(exclusions.is_excluded(0, "hospital-2"));
    assert!(!exclusions.is_excluded(1, "hospital-2"));
    let mut plan = consortium.plan(true, 3);
    plan.nodes
        .retain(|n| !exclusions.is_excluded(0, &n.identity));
    plan.left_out = exclusions.of_round(0);
    consortium.nodes.remove(1);
    let (outcome, _) = consortium.run(plan);
    let gathered = outcome.result.unwrap();
    assert_eq!(gathered.participants.len(), 4);
    assert_eq!(*why(&gathered, "hospital-2"), accused);
}

#[test]
fn an_accusation_after_the_accused_input_was_summed_leaves_only_the_accuser_out_and_the_sum_exact()
{
    // Hospital-1 corrupts its share for hospital-3, and its masked input arrives (and is summed
    // as it comes, never kept) before hospital-3's report of the bad share. The report is not
    // acted on: hospital-1 stays a survivor (its self-mask removed, its key never revealed),
    // hospital-3, which refused the phase, is a dropout, and the sum is exact. A node cannot
    // fail an attempt by accusing a peer late.
    let mut behaviours = vec![Behaviour::Honest; 5];
    behaviours[0] = Behaviour::CorruptsShareFor(3);
    let mut consortium = Consortium::new(&behaviours);
    let (outcome, _) = consortium.run(consortium.plan(true, 3));
    assert!(outcome.accused.is_empty(), "{:?}", outcome.accused);
    let gathered = outcome.result.unwrap();
    assert_eq!(gathered.participants, names(&[1, 2, 4, 5]));
    assert_eq!(gathered.sum.to_vec(), consortium.sum_of(&[1, 2, 4, 5]));
    assert_eq!(
        *why(&gathered, "hospital-3"),
        LeftOut::Refused {
            reason: RefusalReason::ShareAuthentication { from: 1 }
        }
    );
    // The same with the input in pieces, the accusation coming after the first.
    let mut consortium = Consortium::new(&behaviours);
    let (outcome, _) = consortium.run_in_pieces(consortium.plan(true, 3), 1, None);
    let gathered = outcome.result.unwrap();
    assert_eq!(gathered.sum.to_vec(), consortium.sum_of(&[1, 2, 4, 5]));
}

#[test]
fn inputs_sent_in_pieces_sum_to_the_same_as_whole_ones() {
    for words in [1, 2, 3, LEN, LEN + 5] {
        let mut consortium = Consortium::new(&vec![Behaviour::Honest; 4]);
        let (outcome, phases) = consortium.run_in_pieces(consortium.plan(true, 3), words, None);
        let gathered = outcome.result.unwrap();
        assert_eq!(
            gathered.sum.to_vec(),
            consortium.sum_of(&[1, 2, 3, 4]),
            "{words} words"
        );
        assert_eq!(
            phases,
            [
                Phase::Keys,
                Phase::Shares,
                Phase::Inputs,
                Phase::Consistency
            ]
        );
    }
}

#[test]
fn an_input_cut_after_a_piece_fails_the_attempt_and_the_retry_leaves_its_node_out() {
    // Hospital-2's stream fails after its first piece was summed: the piece cannot be taken
    // out, so nothing is unmasked; the retry without hospital-2 sums the other three exactly.
    let mut consortium = Consortium::new(&vec![Behaviour::Honest; 4]);
    let (outcome, phases) = consortium.run_in_pieces(consortium.plan(true, 3), 2, Some(2));
    let failure = outcome.result.unwrap_err();
    assert!(
        matches!(&failure, AttemptFailure::PartialInput { node } if node == "hospital-2"),
        "{failure}"
    );
    assert_eq!(phases, [Phase::Keys, Phase::Shares]);
    assert!(matches!(
        outcome.accused.as_slice(),
        [(who, LeftOut::Connection { .. })] if who == "hospital-2"
    ));
    let mut exclusions = Exclusions::default();
    for (who, why) in outcome.accused {
        exclusions.exclude(0, &who, why);
    }
    let mut plan = consortium.plan(true, 3);
    plan.nodes
        .retain(|n| !exclusions.is_excluded(0, &n.identity));
    plan.left_out = exclusions.of_round(0);
    consortium.nodes.remove(1);
    let (outcome, _) = consortium.run_in_pieces(plan, 2, None);
    let gathered = outcome.result.unwrap();
    assert_eq!(gathered.participants, names(&[1, 3, 4]));
}

#[test]
fn spent_budgets_stop_training_only_when_too_few_nodes_are_left() {
    let spent = Behaviour::Declines(DeclineReason::BudgetSpent);
    // One of four out of budget, three needed: the round goes on without it.
    let mut consortium = Consortium::new(&[
        Behaviour::Honest,
        spent.clone(),
        Behaviour::Honest,
        Behaviour::Honest,
    ]);
    let (outcome, _) = consortium.run(consortium.plan(true, 3));
    let gathered = outcome.result.unwrap();
    assert_eq!(gathered.budget_spent, ["hospital-2"]);
    assert!(why(&gathered, "hospital-2").is_budget_spent());

    // Two of four, three needed: no retry can succeed, in either mode.
    for secure in [true, false] {
        let mut consortium = Consortium::new(&[
            Behaviour::Honest,
            spent.clone(),
            spent.clone(),
            Behaviour::Honest,
        ]);
        let (outcome, phases) = consortium.run(consortium.plan(secure, 3));
        let failure = outcome.result.unwrap_err();
        assert!(
            matches!(&failure, AttemptFailure::BudgetSpent { nodes, need: 3 } if *nodes == names(&[2, 3])),
            "{failure}"
        );
        // Under secure aggregation, nothing goes past the keys.
        assert!(phases.is_empty());
        assert_eq!(failure.next_step(1, 3, true), AfterFailure::StopTraining);
        // The statistics and the final evaluation are retried instead.
        assert_eq!(failure.next_step(1, 3, false), AfterFailure::Retry);
    }
}

#[test]
fn too_few_nodes_or_answers_fail_the_attempt_and_it_is_retried_until_the_last() {
    let consortium = Consortium::honest(2);
    let (_, progress) = Collection::start(consortium.plan(true, 3));
    let Progress::Done(outcome) = progress else {
        panic!("started with too few nodes");
    };
    let failure = outcome.result.unwrap_err();
    assert!(matches!(
        failure,
        AttemptFailure::TooFewNodes { have: 2, need: 3 }
    ));
    assert_eq!(failure.next_step(1, 3, true), AfterFailure::Retry);
    assert_eq!(failure.next_step(3, 3, true), AfterFailure::GiveUp);

    let mut consortium =
        Consortium::new(&[Behaviour::Honest, Behaviour::Disconnects, Behaviour::Honest]);
    let (outcome, _) = consortium.run(consortium.plan(false, 3));
    assert!(matches!(
        outcome.result.unwrap_err(),
        AttemptFailure::TooFewAnswers { have: 2, need: 3 }
    ));
    // Under secure aggregation a phase with too few participants aborts.
    let mut consortium = Consortium::new(&[
        Behaviour::Honest,
        Behaviour::SilentFrom(Phase::Keys),
        Behaviour::SilentFrom(Phase::Keys),
    ]);
    let (outcome, _) = consortium.run(consortium.plan(true, 1));
    assert!(matches!(
        outcome.result.unwrap_err(),
        AttemptFailure::SecureAggregation(_)
    ));
}

#[test]
fn answers_from_nodes_not_asked_or_given_twice_are_ignored() {
    let consortium = Consortium::honest(3);
    let (mut collection, _) = Collection::start(consortium.plan(false, 3));
    let contribution = |round| {
        Message::Contribution(Contribution {
            session: SESSION,
            round,
            kind: ContributionKind::Stats,
            values: PlainFigures::Double(vec![1.0; LEN]),
            privacy: None,
        })
    };
    assert!(matches!(
        collection.handle_answer(9, Ok(contribution(0))),
        Progress::Waiting
    ));
    assert!(matches!(
        collection.handle_answer(1, Ok(contribution(0))),
        Progress::Waiting
    ));
    // A second answer does not replace the first, nor count twice.
    assert!(matches!(
        collection.handle_answer(1, Ok(contribution(7))),
        Progress::Waiting
    ));
    assert!(matches!(
        collection.handle_answer(2, Ok(contribution(0))),
        Progress::Waiting
    ));
    let Progress::Done(outcome) = collection.handle_answer(3, Ok(contribution(0))) else {
        panic!("every node answered");
    };
    assert_eq!(outcome.result.unwrap().sum.to_vec(), vec![3.0; LEN]);
    // Driving the engine after its end fails loudly rather than summing anything.
    let Progress::Done(outcome) = collection.handle_deadline() else {
        panic!("over");
    };
    assert!(matches!(outcome.result, Err(AttemptFailure::Over)));
}

#[test]
fn plain_answers_of_another_round_or_precision_are_rejected() {
    let mut consortium = Consortium::new(&[
        Behaviour::Honest,
        Behaviour::ContributesToAnotherRound,
        Behaviour::SendsSingle,
        Behaviour::Honest,
    ]);
    let (outcome, _) = consortium.run(consortium.plan(false, 2));
    let gathered = outcome.result.unwrap();
    assert_eq!(
        *why(&gathered, "hospital-2"),
        LeftOut::Rejected {
            reason: RefusalReason::WrongRound {
                got: 1,
                expected: 0
            }
        }
    );
    assert!(matches!(
        why(&gathered, "hospital-3"),
        LeftOut::Rejected { reason: RefusalReason::BadContribution { detail } }
            if detail.contains("statistics must be sent as f64")
    ));
    assert_eq!(gathered.sum.to_vec(), consortium.sum_of(&[1, 4]));
}

#[test]
fn nodes_left_out_before_the_attempt_are_reported_with_their_reason() {
    let mut consortium = Consortium::honest(3);
    let mut plan = consortium.plan(true, 3);
    plan.left_out = vec![("hospital-9".into(), LeftOut::NotAnEvaluationParticipant)];
    let (outcome, _) = consortium.run(plan);
    let gathered = outcome.result.unwrap();
    assert_eq!(
        *why(&gathered, "hospital-9"),
        LeftOut::NotAnEvaluationParticipant
    );
    assert_eq!(gathered.participants, names(&[1, 2, 3]));
}

#[test]
fn an_attempt_evaluates_on_schedule_only_over_the_first_evaluations_hospitals_and_not_in_a_retry() {
    let all = names(&[1, 2, 3]);
    let two = names(&[1, 2]);
    // Before any evaluation: on schedule, whatever the attempt.
    let first = decide_evaluation(true, true, 2, None, &all).unwrap();
    assert!(first.evaluate && !first.skipped && first.leave_out.is_empty());
    assert!(
        !decide_evaluation(false, true, 1, None, &all)
            .unwrap()
            .evaluate
    );
    // After one: the same hospitals on a first attempt only.
    let same = decide_evaluation(true, true, 1, Some(&all), &all).unwrap();
    assert!(same.evaluate);
    let retry = decide_evaluation(true, true, 2, Some(&all), &all).unwrap();
    assert!(!retry.evaluate && retry.skipped);
    let others = decide_evaluation(true, true, 1, Some(&all), &two).unwrap();
    assert!(!others.evaluate && others.skipped);
    // The evaluation-only round asks the first evaluation's hospitals alone …
    let only = decide_evaluation(true, false, 2, Some(&two), &all).unwrap();
    assert!(only.evaluate);
    assert_eq!(only.leave_out, names(&[3]));
    // … and cannot run without all of them.
    let missing = decide_evaluation(true, false, 1, Some(&all), &two).unwrap_err();
    assert!(matches!(
        missing,
        AttemptFailure::EvaluationParticipants { before, now } if before == all && now == two
    ));
}

#[test]
fn an_inflated_example_count_fails_the_attempt_beyond_the_noise_tolerance() {
    assert!(check_example_count(100.0, 100, 0.0).is_ok());
    assert!(check_example_count(100.4, 100, 0.0).is_ok());
    assert!(matches!(
        check_example_count(101.0, 100, 0.0),
        Err(AttemptFailure::ExampleCountMismatch { counted: 100, .. })
    ));
    // Six standard deviations of the statistics' noise, and a half.
    assert!(check_example_count(100.0 + 6.0 * 2.0 + 0.4, 100, 2.0).is_ok());
    assert!(check_example_count(100.0 + 6.0 * 2.0 + 0.6, 100, 2.0).is_err());
    assert!(check_example_count(f64::NAN, 100, 2.0).is_err());
}

#[test]
fn an_exclusion_keeps_its_first_reason() {
    let mut exclusions = Exclusions::default();
    exclusions.exclude(2, "a", LeftOut::NotAnEvaluationParticipant);
    exclusions.exclude(2, "a", LeftOut::Deadline);
    exclusions.exclude(3, "b", LeftOut::Deadline);
    assert_eq!(
        exclusions.of_round(2),
        [("a".to_owned(), LeftOut::NotAnEvaluationParticipant)]
    );
}

#[test]
fn reasons_serialise_as_tagged_records_for_the_round_report() {
    let why = LeftOut::ShareAuthentication {
        peer: "hospital-a".into(),
    };
    let json = serde_json::to_string(&why).unwrap();
    assert_eq!(
        json,
        r#"{"kind":"share_authentication","peer":"hospital-a"}"#
    );
    assert_eq!(serde_json::from_str::<LeftOut>(&json).unwrap(), why);
    assert_eq!(
        why.to_string(),
        "its secure-aggregation share for hospital-a failed authentication"
    );
}

fn contribution(kind: ContributionKind, values: PlainFigures) -> Message {
    Message::Contribution(Contribution {
        session: 7,
        round: 2,
        kind,
        values,
        privacy: None,
    })
}

/// The detail of a `BadContribution` rejection.
fn rejection(result: Result<Contribution, LeftOut>) -> String {
    match result {
        Err(LeftOut::Rejected {
            reason: RefusalReason::BadContribution { detail },
        }) => detail,
        other => panic!("expected a bad-contribution rejection, got {other:?}"),
    }
}

#[test]
fn round_vectors_are_accepted_at_either_precision_and_summed_in_f64() {
    let mut sum = RoundSum::default();
    for values in [
        PlainFigures::Single(vec![1.0, 0.5, f32::MAX]),
        PlainFigures::Double(vec![2.0, 0.25, 1.0]),
        PlainFigures::Single(vec![3.0, 0.125, f32::MAX]),
    ] {
        let message = contribution(ContributionKind::Round, values);
        let checked = check_contribution(message, 7, 2, ContributionKind::Round, 3).unwrap();
        assert!(sum.add(&checked.values));
    }
    // Twice f32::MAX overflows f32, not the f64 sum.
    assert_eq!(
        sum.to_vec(),
        vec![6.0, 0.875, 2.0 * f64::from(f32::MAX) + 1.0]
    );
}

#[test]
fn statistics_sent_as_f32_are_refused() {
    let stats = |values| contribution(ContributionKind::Stats, values);
    let detail = rejection(check_contribution(
        stats(PlainFigures::Single(vec![4.0, 2.0, 1.0])),
        7,
        2,
        ContributionKind::Stats,
        3,
    ));
    assert!(
        detail.contains("statistics must be sent as f64"),
        "{detail}"
    );
    let exact = PlainFigures::Double(vec![4.0, 2.0, 1.0]);
    let checked =
        check_contribution(stats(exact.clone()), 7, 2, ContributionKind::Stats, 3).unwrap();
    assert_eq!(checked.values, exact);
}

#[test]
fn non_finite_or_misshapen_figures_are_refused_at_either_precision() {
    let round = |values| {
        rejection(check_contribution(
            contribution(ContributionKind::Round, values),
            7,
            2,
            ContributionKind::Round,
            3,
        ))
    };
    for values in [
        PlainFigures::Single(vec![1.0, f32::INFINITY, 0.0]),
        PlainFigures::Single(vec![1.0, f32::NAN, 0.0]),
        PlainFigures::Double(vec![1.0, f64::NEG_INFINITY, 0.0]),
    ] {
        let detail = round(values);
        assert_eq!(detail, "value 1 is not finite");
    }
    let detail = round(PlainFigures::Single(vec![1.0, 2.0]));
    assert!(detail.contains("of 2 values"), "{detail}");
}
