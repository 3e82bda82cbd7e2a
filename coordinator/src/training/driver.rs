//! Drives the round engine's [`Collection`] over the network: each phase's messages are sent in
//! parallel, each on a fresh stream (the model pushed first where a node lacks it), and every
//! answer is handed to the engine as it arrives, until the phase's deadline.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use medfed_protocol::messages::Message;
use medfed_protocol::round::{
    Collection, CollectionPlan, LeftOut, Outcome, Outgoing, Phase, Progress,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{PausePhase, PausePoint};
use crate::console::{Console, RoundPhase};
use crate::exchange::{self, ModelPush};
use crate::faults;
use crate::phases::PhaseClock;
use crate::registry::NodeHandle;

/// Pieces of masked inputs (256 KiB each) the coordinator holds at once, being read from the
/// nodes' streams or waiting to be summed, whatever the number of nodes: enough for as many
/// nodes to upload at full speed at once (a piece is summed in well under a millisecond).
const INPUT_PIECES_IN_FLIGHT: usize = 8;

/// The network side of one collection.
pub(super) struct Driver<'a> {
    /// Hears of each phase and answer, for the operator.
    pub(super) console: &'a Console,
    /// The nodes asked, in the plan's order (participant `i + 1` is `nodes[i]`).
    pub(super) nodes: &'a [Arc<NodeHandle>],
    /// The model to push before a request that needs it (the first requests only).
    pub(super) model: Option<Arc<ModelPush>>,
    /// How long each phase waits for its answers.
    pub(super) phase_deadline: Duration,
    /// Test-only fault injection.
    pub(super) pause_at: Option<PausePoint>,
}

impl Driver<'_> {
    /// Runs `plan` to its outcome. The model push is dropped once the first requests (the only
    /// ones it goes before) are answered: the rest of the round does not hold its frames.
    pub(super) async fn collect(mut self, plan: CollectionPlan) -> Outcome {
        let mut model = self.model.take();
        let round = plan.request.round();
        let secure = plan.secure.is_some();
        let (mut collection, mut progress) = Collection::start(plan);
        let mut clock = PhaseClock::start();
        loop {
            match progress {
                Progress::Done(outcome) => {
                    if outcome.result.is_ok() {
                        if secure {
                            clock.lap(Phase::Unmask);
                            clock.log(round);
                        }
                        self.console.phase(RoundPhase::Applying, None);
                        faults::pause(self.pause_at, round, PausePhase::Unmasked).await;
                    }
                    return outcome;
                }
                Progress::Send { ended, sends } => {
                    match ended {
                        Some(phase) => {
                            clock.lap(phase);
                            self.console
                                .phase(next_phase(phase), Some(self.phase_deadline));
                            self.after_phase(round, phase, &collection).await;
                        }
                        None => {
                            self.console
                                .phase(RoundPhase::Request, Some(self.phase_deadline));
                            self.console.asked(
                                sends
                                    .iter()
                                    .filter_map(|send| collection.identity(send.index)),
                            );
                        }
                    }
                    progress = self
                        .exchange(&mut collection, round, sends, model.take())
                        .await;
                }
                // Nothing left to wait for: the phase ends.
                Progress::Waiting => progress = collection.handle_deadline(),
            }
        }
    }

    /// The fault-injection points between phases.
    async fn after_phase(&self, round: u64, phase: Phase, collection: &Collection) {
        let point = match phase {
            Phase::Keys => PausePhase::KeysCollected,
            Phase::Shares => PausePhase::SharesRelayed,
            Phase::Inputs if collection.inputs_received() => PausePhase::MaskedInputs,
            _ => return,
        };
        faults::pause(self.pause_at, round, point).await;
    }

    /// Sends one phase's messages and hands the answers to the engine until it moves on or the
    /// deadline passes.
    async fn exchange(
        &self,
        collection: &mut Collection,
        round: u64,
        sends: Vec<Outgoing>,
        model: Option<Arc<ModelPush>>,
    ) -> Progress {
        let deadline = tokio::time::Instant::now() + self.phase_deadline;
        let mut tasks = JoinSet::new();
        // Pieces of masked inputs, added to the sum here as they arrive: a few in flight,
        // whatever the number of nodes (a node's stream waits for a slot, under flow control).
        let (pieces, mut arriving) = mpsc::channel(INPUT_PIECES_IN_FLIGHT);
        // Who has not answered yet, for the console when the deadline passes.
        let mut pending: BTreeSet<u16> = sends.iter().map(|send| send.index).collect();
        for send in sends {
            let Some(node) = usize::from(send.index)
                .checked_sub(1)
                .and_then(|i| self.nodes.get(i))
                .cloned()
            else {
                continue;
            };
            let push = model.clone().filter(|_| send.push_model);
            let pause_at = push.as_ref().and(self.pause_at);
            // Only a masked input (the answer to a share delivery) may come in pieces.
            let pieces = matches!(send.message, Message::SecAggDelivery(_)).then(|| pieces.clone());
            tasks.spawn(async move {
                let answer = async {
                    if let Some(push) = &push
                        && node.held_model() != Some(push.hash())
                    {
                        exchange::push_model(&node, push).await?;
                    }
                    faults::pause(pause_at, round, PausePhase::ModelPushed).await;
                    let pieces = pieces.as_ref().map(|pieces| (pieces, send.index));
                    exchange::request(&node, &send.message, pieces).await
                };
                (send.index, answer.await.map_err(LeftOut::from))
            });
        }
        drop(pieces);
        loop {
            tokio::select! {
                // The deadline first, so that a stream of pieces cannot hold the phase open.
                biased;
                () = tokio::time::sleep_until(deadline) => {
                    for index in &pending {
                        if let Some(name) = collection.identity(*index)
                            && !collection.has_answered(*index)
                        {
                            self.console.answered(name, Some(&LeftOut::Deadline));
                        }
                    }
                    return collection.handle_deadline();
                }
                Some((index, piece)) = arriving.recv() => {
                    match collection.handle_input_chunk(index, &piece) {
                        Progress::Waiting => {}
                        progress => return progress,
                    }
                }
                joined = tasks.join_next() => match joined {
                    Some(Ok((index, answer))) => {
                        // Every piece its exchange queued comes before its end: each was sent
                        // before the exchange could end.
                        while let Ok((from, piece)) = arriving.try_recv() {
                            if let progress @ (Progress::Send { .. } | Progress::Done(_)) =
                                collection.handle_input_chunk(from, &piece)
                            {
                                return progress;
                            }
                        }
                        pending.remove(&index);
                        if let Some(name) = collection.identity(index) {
                            self.console.answered(name, left_out_by(&answer).as_ref());
                        }
                        match collection.handle_answer(index, answer) {
                            Progress::Waiting => {}
                            progress => return progress,
                        }
                    }
                    // A task that panicked: its node counts as silent.
                    Some(Err(_)) => {}
                    None => return collection.handle_deadline(),
                },
            }
        }
    }
}

/// Why an answer leaves its node out, as the console shows it: a failed exchange, or the node
/// declining or refusing the request (the engine draws the same conclusion from the message).
fn left_out_by(answer: &Result<Message, LeftOut>) -> Option<LeftOut> {
    match answer {
        Err(why) => Some(why.clone()),
        Ok(message @ (Message::Declined(_) | Message::Refused(_))) => {
            Some(LeftOut::from_unexpected(message.clone(), "an answer"))
        }
        Ok(_) => None,
    }
}

/// The phase the console shows once `ended` is over: under secure aggregation the request's
/// answers are the round keys, and each phase after follows the one before.
fn next_phase(ended: Phase) -> RoundPhase {
    match ended {
        Phase::Keys => RoundPhase::Shares,
        Phase::Shares => RoundPhase::Inputs,
        Phase::Inputs => RoundPhase::Consistency,
        Phase::Consistency => RoundPhase::Unmask,
        Phase::Unmask => RoundPhase::Applying,
    }
}
