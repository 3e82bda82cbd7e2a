//! One attempt at collecting a set of figures from the nodes asked: the request, then (under
//! secure aggregation) the four phases that follow the keys as one loop, ending in the sum.
//!
//! [`Collection`] does no IO and reads no clock. The driver sends each [`Outgoing`], feeds every
//! answer to [`Collection::handle_answer`] and, when the phase's deadline passes first, calls
//! [`Collection::handle_deadline`]. Either returns the [`Progress`]: wait for more answers, send
//! the next phase's requests, or the attempt's [`Outcome`]. A phase's answers are handled
//! together, in the nodes' order, once the last one is in: a peer's report that a share failed
//! authentication must be known before any masked input is summed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tracing::{info, warn};

use crate::contribution::RoundLayout;
use crate::manifest::SecureAggregationPlan;
use crate::messages::{
    Contribution, ContributionKind, Message, PlainFigures, PrivacySpent, RefusalReason, Refused,
    RoundKeys, RoundStart, SecAggSetup, StatsRequest,
};
use crate::report::NodePrivacy;
use crate::secagg::encoding::{BlockEncoding, UpdateEncoding, VectorEncoding};
use crate::secagg::{
    ExpectKeys, ExpectMaskedInputs, ExpectShares, ExpectSignatures, ExpectUnmasking, InputPiece,
    MaskedInput, Participant, PeerVerifier, RoundParams, SecAggError, SecureSum, ShareDelivery,
};

use super::rules::check_budgets;
use super::sum::RoundSum;
use super::{AttemptFailure, LeftOut, check_contribution};

/// What the nodes are asked for.
#[derive(Clone, Debug)]
pub enum Request {
    /// The federated statistics (round 0).
    Stats(StatsRequest),
    /// A round's evaluation and update, on the model pushed first.
    Round(RoundStart),
}

impl Request {
    fn session(&self) -> u64 {
        match self {
            Self::Stats(r) => r.session,
            Self::Round(r) => r.session,
        }
    }

    /// The round asked for (0: the statistics).
    pub fn round(&self) -> u64 {
        match self {
            Self::Stats(r) => r.round,
            Self::Round(r) => r.round,
        }
    }

    fn kind(&self) -> ContributionKind {
        match self {
            Self::Stats(_) => ContributionKind::Stats,
            Self::Round(_) => ContributionKind::Round,
        }
    }

    /// The request's message, with the secure-aggregation setup (`None`: summed in the clear).
    fn message(&self, setup: Option<SecAggSetup>) -> Message {
        match self {
            Self::Stats(r) => Message::StatsRequest(StatsRequest {
                secure_aggregation: setup,
                ..r.clone()
            }),
            Self::Round(r) => Message::RoundStart(RoundStart {
                secure_aggregation: setup,
                ..r.clone()
            }),
        }
    }
}

/// The shape of the figures collected.
#[derive(Clone, Copy, Debug)]
pub enum FigureLayout {
    /// The statistics vector, exact integers of any size.
    Stats {
        /// Its length ([`crate::schema::Schema::stats_len`]).
        len: usize,
    },
    /// A round vector.
    Round(RoundLayout),
}

impl FigureLayout {
    /// Figures per node.
    pub fn len(&self) -> usize {
        match self {
            Self::Stats { len } => *len,
            Self::Round(layout) => layout.len(),
        }
    }

    /// Whether there are no figures at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn encoding(&self, update: &UpdateEncoding) -> VectorEncoding {
        match self {
            Self::Stats { len } => VectorEncoding::new(vec![(*len, BlockEncoding::Wide)]),
            Self::Round(layout) => layout.encoding(update),
        }
    }
}

/// A node asked: its identity and the certificate it presented on its connection.
#[derive(Clone, Debug)]
pub struct Asked {
    /// The subject of its certificate.
    pub identity: String,
    /// The certificate (DER), relayed to its peers with its signed keys.
    pub certificate: Vec<u8>,
}

/// How the figures are securely aggregated: the manifest's plan and what the driver supplies
/// that the engine cannot make itself (randomness, a buffer, a certificate check).
pub struct SecurePlan {
    /// The manifest's secure-aggregation settings.
    pub settings: SecureAggregationPlan,
    /// The approved manifest's digest: each round's encoding is bound to it.
    pub manifest_digest: [u8; 32],
    /// Public randomness for the neighbour graph, from the OS CSPRNG.
    pub graph_seed: [u8; 32],
    /// Checks the survivors' signatures against their certificates.
    pub verifier: Arc<dyn PeerVerifier + Send + Sync>,
}

impl std::fmt::Debug for SecurePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurePlan")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Everything one collection needs.
#[derive(Debug)]
pub struct CollectionPlan {
    /// The request.
    pub request: Request,
    /// The figures' shape.
    pub layout: FigureLayout,
    /// Fewer summed nodes than this fails the attempt.
    pub min_nodes: usize,
    /// The nodes asked, in order: node `i` (from 0) is participant `i + 1`.
    pub nodes: Vec<Asked>,
    /// Nodes left out of the round before this attempt, with why (reported as dropped).
    pub left_out: Vec<(String, LeftOut)>,
    /// Secure aggregation; `None` when the consortium turned it off.
    pub secure: Option<SecurePlan>,
}

/// A message for participant `index`.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The participant (from 1, in the plan's order).
    pub index: u16,
    /// The request.
    pub message: Message,
    /// Whether the round's model must be pushed first (where the node lacks it).
    pub push_model: bool,
}

/// The phases of a secure-aggregation collection, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The figures are computed and each node sends its signed round keys.
    Keys,
    /// Encrypted shares for the neighbours are collected and relayed.
    Shares,
    /// The masked inputs arrive and are summed.
    Inputs,
    /// Each survivor signs the survivor set.
    Consistency,
    /// The unmasking shares arrive and the masks are removed.
    Unmask,
}

/// What the driver does next.
#[derive(Debug)]
pub enum Progress {
    /// Wait for more answers to the current phase.
    Waiting,
    /// Send these: the first requests (`ended: None`) or the next phase's, after `ended`.
    Send {
        /// The phase that just ended.
        ended: Option<Phase>,
        /// The messages.
        sends: Vec<Outgoing>,
    },
    /// The collection is over.
    Done(Outcome),
}

/// How a collection ended.
#[derive(Debug)]
pub struct Outcome {
    /// The sum and who is in it, or why the attempt failed.
    pub result: Result<Gathered, AttemptFailure>,
    /// Nodes whose share a peer could not authenticate: they sit out the round's remaining
    /// attempts, whether or not this one succeeded.
    pub accused: Vec<(String, LeftOut)>,
    /// Whether any masked input arrived (the phase after which no retry is free for the nodes).
    pub inputs_received: bool,
}

/// The sum of one collection.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The summed figures: in the clear, or the unmasked secure sum read a piece at a time.
    pub sum: RoundSum,
    /// The nodes whose figures are in the sum, sorted.
    pub participants: Vec<String>,
    /// Nodes asked (or left out before) whose figures are not in it, with why.
    pub dropped: Vec<(String, LeftOut)>,
    /// The privacy each node that trains privately declared it has spent.
    pub privacy: Vec<NodePrivacy>,
    /// Nodes that declined because their privacy budget is spent.
    pub budget_spent: Vec<String>,
}

impl Gathered {
    fn leave_out(&mut self, identity: &str, why: LeftOut) {
        warn!(node = %identity, reason = %why, "node left out of the round");
        if why.is_budget_spent() {
            self.budget_spent.push(identity.to_owned());
        }
        self.dropped.push((identity.to_owned(), why));
    }

    fn declare(&mut self, identity: &str, privacy: Option<PrivacySpent>) {
        if let Some(spent) = privacy {
            info!(node = %identity, epsilon = spent.epsilon, delta = spent.delta, "node's declared privacy spent");
            self.privacy.push(NodePrivacy::spent_by(identity, spent));
        }
    }
}

/// The secure-aggregation server's state, one per phase.
enum Stage {
    Plain,
    Keys(ExpectKeys),
    Shares(ExpectShares),
    Inputs(ExpectMaskedInputs),
    Signatures(ExpectSignatures),
    Unmasking(ExpectUnmasking),
    Over,
}

/// What secure aggregation keeps for the whole collection.
struct Secure {
    encoding: VectorEncoding,
    verifier: Arc<dyn PeerVerifier + Send + Sync>,
}

/// One collection in progress.
pub struct Collection {
    session: u64,
    round: u64,
    kind: ContributionKind,
    value_len: usize,
    min_nodes: usize,
    nodes: Vec<Asked>,
    left_out_before: Vec<(String, LeftOut)>,
    secure: Option<Secure>,
    stage: Stage,
    /// Participants asked in the current phase.
    awaiting: BTreeSet<u16>,
    /// Their answers so far.
    answers: BTreeMap<u16, Result<Message, LeftOut>>,
    gathered: Gathered,
    accused: Vec<(String, LeftOut)>,
    inputs_received: bool,
    /// Participants whose masked input of the current phase is already in the running sum
    /// (their answer keeps the message without its values).
    summed: BTreeSet<u16>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("round", &self.round)
            .field("awaiting", &self.awaiting)
            .field("answered", &self.answers.len())
            .finish_non_exhaustive()
    }
}

impl Collection {
    /// Starts a collection: the first requests to send, or at once the outcome (too few nodes,
    /// or a vector secure aggregation cannot carry for this many).
    pub fn start(plan: CollectionPlan) -> (Self, Progress) {
        let CollectionPlan {
            request,
            layout,
            min_nodes,
            nodes,
            left_out,
            secure,
        } = plan;
        let mut collection = Self {
            session: request.session(),
            round: request.round(),
            kind: request.kind(),
            value_len: layout.len(),
            min_nodes,
            nodes,
            left_out_before: left_out,
            secure: None,
            stage: Stage::Over,
            awaiting: BTreeSet::new(),
            answers: BTreeMap::new(),
            gathered: Gathered::default(),
            accused: Vec::new(),
            inputs_received: false,
            summed: BTreeSet::new(),
        };
        if collection.nodes.len() < min_nodes {
            let failure = AttemptFailure::TooFewNodes {
                have: collection.nodes.len(),
                need: min_nodes,
            };
            return collection.fail(failure);
        }
        let push_model = matches!(request, Request::Round(_));
        let everyone: Vec<u16> = (1..=collection.nodes.len() as u16).collect();
        let message = match secure {
            None => {
                warn!(
                    "secure aggregation is OFF: the coordinator sees every node's figures in the clear"
                );
                collection.stage = Stage::Plain;
                request.message(None)
            }
            Some(plan) => match collection.start_secure(plan, &layout) {
                Ok(setup) => request.message(Some(setup)),
                Err(e) => return collection.fail(e.into()),
            },
        };
        let progress = collection.ask(None, &everyone, |_| message.clone(), push_model);
        (collection, progress)
    }

    /// Sets up the secure-aggregation server for the nodes asked; the setup to send them.
    fn start_secure(
        &mut self,
        plan: SecurePlan,
        layout: &FigureLayout,
    ) -> Result<SecAggSetup, SecAggError> {
        let update = plan.settings.update_encoding(self.nodes.len());
        let encoding = layout.encoding(&update);
        encoding.check_capacity(self.nodes.len())?;
        let participants = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| Participant {
                index: i as u16 + 1,
                identity: node.identity.clone(),
            })
            .collect();
        let mut params = RoundParams {
            session: self.session,
            round: self.round,
            participants,
            threshold: 0,
            neighbours: plan.settings.neighbours(),
            graph_seed: plan.graph_seed,
            vector_len: encoding.encoded_len(),
            // Bound to the manifest every node approved: a node shown another one refuses.
            encoding_digest: encoding.task_digest(&plan.manifest_digest),
        };
        params.threshold = plan
            .settings
            .threshold
            .threshold(params.holders_per_secret());
        self.stage = Stage::Keys(ExpectKeys::new(params.clone())?);
        self.secure = Some(Secure {
            encoding,
            verifier: plan.verifier,
        });
        Ok(SecAggSetup {
            params,
            update_encoding: update,
        })
    }

    /// Takes participant `index`'s answer to the current phase (or why none came: the
    /// connection failed, the frame was bad). Answers from anyone not awaited are ignored.
    pub fn handle_answer(&mut self, index: u16, answer: Result<Message, LeftOut>) -> Progress {
        if !self.awaiting.contains(&index) || self.answers.contains_key(&index) {
            return Progress::Waiting;
        }
        let answer = self.sum_on_arrival(index, answer);
        self.answers.insert(index, answer);
        if self.answers.len() < self.awaiting.len() {
            return Progress::Waiting;
        }
        self.end_phase()
    }

    /// In secure aggregation's phase 3, adds a masked input to the running sum as it arrives
    /// and keeps only its message's header: the coordinator holds the sum and the inputs in
    /// flight, never every hospital's input (its memory does not grow with the hospitals). An
    /// input from a participant a peer has already accused of a bad share is not summed.
    ///
    /// Without secure aggregation, likewise, each contribution is checked and added to the
    /// running sum as it arrives, and kept without its figures.
    fn sum_on_arrival(
        &mut self,
        index: u16,
        answer: Result<Message, LeftOut>,
    ) -> Result<Message, LeftOut> {
        if matches!(self.stage, Stage::Plain) {
            let contribution = self.sum_plain_figures(answer?)?;
            self.summed.insert(index);
            return Ok(Message::Contribution(contribution));
        }
        if !matches!(self.stage, Stage::Inputs(_)) {
            return answer;
        }
        let Ok(Message::SecAggInput(input)) = answer else {
            return answer;
        };
        if let Some(peer) = self.accuser_of(index, &self.answers) {
            return Err(LeftOut::ShareAuthentication { peer });
        }
        let Stage::Inputs(server) = &mut self.stage else {
            return Ok(Message::SecAggInput(input));
        };
        server.handle_input(index, &input).map_err(violation)?;
        self.summed.insert(index);
        Ok(Message::SecAggInput(MaskedInput {
            values: Vec::new(),
            ..input
        }))
    }

    /// Takes one piece of participant `index`'s masked input in secure aggregation's phase 3
    /// (a node sends its input as [`MaskedInputChunk`](crate::secagg::MaskedInputChunk)s, in
    /// order; the driver hands each over
    /// decoded or, without a copy, as its frame's bytes: an
    /// [`InputPieceFrame`](crate::codec::InputPieceFrame)): it is added to the running sum at
    /// once and not kept. The last piece completes the node's answer; a bad piece is its
    /// answer, why it is left out. Pieces from anyone not awaited, or already answered, are
    /// ignored.
    pub fn handle_input_chunk(&mut self, index: u16, chunk: &impl InputPiece) -> Progress {
        if !self.awaiting.contains(&index) || self.answers.contains_key(&index) {
            return Progress::Waiting;
        }
        let started = matches!(&self.stage, Stage::Inputs(server) if server.started(index));
        let accuser = (!started)
            .then(|| self.accuser_of(index, &self.answers))
            .flatten();
        let answer = if let Some(peer) = accuser {
            Err(LeftOut::ShareAuthentication { peer })
        } else {
            let Stage::Inputs(server) = &mut self.stage else {
                return Progress::Waiting;
            };
            match server.handle_input_chunk(index, chunk) {
                Err(e) => Err(violation(e)),
                Ok(()) if server.has_input(index) => {
                    self.summed.insert(index);
                    Ok(Message::SecAggInput(MaskedInput {
                        session: chunk.header().session,
                        round: chunk.header().round,
                        values: Vec::new(),
                    }))
                }
                Ok(()) => return Progress::Waiting,
            }
        };
        self.answers.insert(index, answer);
        if self.answers.len() < self.awaiting.len() {
            return Progress::Waiting;
        }
        self.end_phase()
    }

    /// The identity of the peer that reported a bad share from participant `accused` among
    /// `answers`, if one did.
    fn accuser_of(
        &self,
        accused: u16,
        answers: &BTreeMap<u16, Result<Message, LeftOut>>,
    ) -> Option<String> {
        answers.iter().find_map(|(index, answer)| match answer {
            Ok(Message::Refused(Refused {
                reason: RefusalReason::ShareAuthentication { from },
                ..
            })) if *from == accused && *index != accused => {
                self.identity(*index).map(str::to_owned)
            }
            _ => None,
        })
    }

    /// The phase's deadline passed: whoever has not answered is left out, and the phase ends.
    pub fn handle_deadline(&mut self) -> Progress {
        for index in &self.awaiting {
            self.answers.entry(*index).or_insert(Err(LeftOut::Deadline));
        }
        self.end_phase()
    }

    /// Whether participant `index` has answered the current phase (its masked input complete,
    /// for one sent in pieces).
    pub fn has_answered(&self, index: u16) -> bool {
        self.answers.contains_key(&index)
    }

    /// The identity of participant `index`.
    pub fn identity(&self, index: u16) -> Option<&str> {
        self.node(index).ok().map(|node| node.identity.as_str())
    }

    fn node(&self, index: u16) -> Result<&Asked, LeftOut> {
        usize::from(index)
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .ok_or_else(|| LeftOut::SecureAggregation {
                detail: format!("no participant {index}"),
            })
    }

    /// Whether any masked input has arrived (secure aggregation's phase 3 is over).
    pub fn inputs_received(&self) -> bool {
        self.inputs_received
    }

    /// Asks `indices` for the next phase's answers.
    fn ask(
        &mut self,
        ended: Option<Phase>,
        indices: &[u16],
        mut message: impl FnMut(u16) -> Message,
        push_model: bool,
    ) -> Progress {
        self.awaiting = indices.iter().copied().collect();
        self.answers.clear();
        if self.awaiting.is_empty() {
            return self.end_phase();
        }
        let sends = indices
            .iter()
            .map(|&index| Outgoing {
                index,
                message: message(index),
                push_model,
            })
            .collect();
        Progress::Send { ended, sends }
    }

    /// Handles the phase's answers, in the nodes' order, and moves on.
    fn end_phase(&mut self) -> Progress {
        let answers = std::mem::take(&mut self.answers);
        self.awaiting.clear();
        let stage = std::mem::replace(&mut self.stage, Stage::Over);
        let next = match stage {
            Stage::Plain => self.sum_plain(answers),
            Stage::Keys(server) => self.keys(server, answers),
            Stage::Shares(server) => self.shares(server, answers),
            Stage::Inputs(server) => self.inputs(server, answers),
            Stage::Signatures(server) => self.signatures(server, answers),
            Stage::Unmasking(server) => self.unmask(server, answers),
            Stage::Over => Err(AttemptFailure::Over),
        };
        next.unwrap_or_else(|failure| self.outcome(Err(failure)))
    }

    /// Hands each answer to `accept`; an answer that is not accepted leaves its node out.
    fn take(
        &mut self,
        answers: BTreeMap<u16, Result<Message, LeftOut>>,
        mut accept: impl FnMut(&mut Self, u16, Message) -> Result<(), LeftOut>,
    ) {
        for (index, answer) in answers {
            if let Err(why) = answer.and_then(|message| accept(self, index, message)) {
                let identity = self.identity(index).unwrap_or_default().to_owned();
                self.gathered.leave_out(&identity, why);
            }
        }
    }

    fn sum_plain(
        &mut self,
        answers: BTreeMap<u16, Result<Message, LeftOut>>,
    ) -> Result<Progress, AttemptFailure> {
        let asked = answers.len();
        // Each in the nodes' order, though their figures were summed as they arrived.
        self.take(answers, |this, index, message| {
            let contribution = match message {
                Message::Contribution(summed) if this.summed.remove(&index) => summed,
                other => this.sum_plain_figures(other)?,
            };
            let identity = this.identity(index).unwrap_or_default().to_owned();
            this.gathered.declare(&identity, contribution.privacy);
            this.gathered.participants.push(identity);
            Ok(())
        });
        check_budgets(asked, &self.gathered.budget_spent, self.min_nodes)?;
        self.gathered.participants.sort();
        Ok(self.finish())
    }

    /// Checks a contribution summed in the clear and adds its figures to the running sum;
    /// returns it without them.
    fn sum_plain_figures(&mut self, answer: Message) -> Result<Contribution, LeftOut> {
        let (session, round, kind, len) = (self.session, self.round, self.kind, self.value_len);
        let mut contribution = check_contribution(answer, session, round, kind, len)?;
        if !self.gathered.sum.add(&contribution.values) {
            return Err(LeftOut::from_unexpected(
                Message::Contribution(contribution),
                "secagg_input",
            ));
        }
        contribution.values = PlainFigures::Double(Vec::new());
        Ok(contribution)
    }

    /// Phase 1 over: the key directory for everyone who sent keys.
    fn keys(
        &mut self,
        mut server: ExpectKeys,
        answers: BTreeMap<u16, Result<Message, LeftOut>>,
    ) -> Result<Progress, AttemptFailure> {
        let asked = answers.len();
        let mut declared = Vec::new();
        self.take(answers, |this, index, message| match message {
            Message::SecAggKeys(RoundKeys { keys, privacy }) => {
                let node = this.node(index)?;
                let (identity, certificate) = (node.identity.clone(), node.certificate.clone());
                server
                    .handle_keys(index, keys, certificate)
                    .map_err(violation)?;
                declared.push((identity, privacy));
                Ok(())
            }
            other => Err(LeftOut::from_unexpected(other, "secagg_keys")),
        });
        for (identity, privacy) in declared {
            self.gathered.declare(&identity, privacy);
        }
        check_budgets(asked, &self.gathered.budget_spent, self.min_nodes)?;
        let (server, directory) = server.finish()?;
        let participants = server.participants();
        self.stage = Stage::Shares(server);
        Ok(self.ask(
            Some(Phase::Keys),
            &participants,
            |_| Message::SecAggDirectory(directory.clone()),
            false,
        ))
    }

    /// Phase 2 over: each survivor's shares, relayed.
    fn shares(
        &mut self,
        mut server: ExpectShares,
        answers: BTreeMap<u16, Result<Message, LeftOut>>,
    ) -> Result<Progress, AttemptFailure> {
        self.take(answers, |_, index, message| match message {
            Message::SecAggShares(package) => {
                server.handle_package(index, package).map_err(violation)
            }
            other => Err(LeftOut::from_unexpected(other, "secagg_shares")),
        });
        let (server, mut deliveries) = server.finish()?;
        let participants = server.participants();
        self.stage = Stage::Inputs(server);
        let (session, round) = (self.session, self.round);
        Ok(self.ask(
            Some(Phase::Shares),
            &participants,
            |index| {
                Message::SecAggDelivery(deliveries.remove(&index).unwrap_or(ShareDelivery {
                    session,
                    round,
                    shares: Vec::new(),
                    senders: Vec::new(),
                }))
            },
            false,
        ))
    }

    /// Phase 3 over: the masked inputs summed, less those of nodes a peer accused of a bad
    /// share. An accused node's masks are removed as a dropout's; the peer that reported it
    /// refused this phase, and is a dropout too.
    fn inputs(
        &mut self,
        mut server: ExpectMaskedInputs,
        answers: BTreeMap<u16, Result<Message, LeftOut>>,
    ) -> Result<Progress, AttemptFailure> {
        let summed = std::mem::take(&mut self.summed);
        // An accusation against a node whose input is already (wholly or partly) in the sum is
        // not acted on: that node stays a survivor (its self-mask is removed, its secret key
        // never revealed, so the sum is exact and its input private), and its accuser, which
        // refused this phase, is a dropout, as before sums were taken on arrival. A late
        // accusation cannot fail the attempt.
        let accused = self.accusations(&answers, |from| {
            summed.contains(&from) || server.started(from)
        });
        self.inputs_received = answers
            .values()
            .any(|answer| matches!(answer, Ok(Message::SecAggInput(_))));
        // A piece of an input whose stream then failed cannot be taken out of the running sum
        // (unmasking it as a dropout's would reveal the piece): the attempt fails, and every
        // such node sits out the round's retries, with why its stream failed.
        let partial = server.partially_summed();
        if let Some(&first) = partial.first() {
            for index in partial {
                let node = self.identity(index).unwrap_or_default().to_owned();
                let why = match answers.get(&index) {
                    Some(Err(why)) => why.clone(),
                    _ => LeftOut::Deadline,
                };
                if !self.accused.iter().any(|(who, _)| *who == node) {
                    self.accused.push((node, why));
                }
            }
            let node = self.identity(first).unwrap_or_default().to_owned();
            return Err(AttemptFailure::PartialInput { node });
        }
        self.take(answers, |_, index, message| {
            if let Some(peer) = accused.get(&index) {
                return Err(LeftOut::ShareAuthentication { peer: peer.clone() });
            }
            match message {
                Message::SecAggInput(_) if summed.contains(&index) => Ok(()),
                Message::SecAggInput(input) => {
                    server.handle_input(index, &input).map_err(violation)
                }
                other => Err(LeftOut::from_unexpected(other, "secagg_input")),
            }
        });
        let (server, consistency) = server.finish()?;
        let participants = server.participants();
        self.stage = Stage::Signatures(server);
        Ok(self.ask(
            Some(Phase::Inputs),
            &participants,
            |_| Message::SecAggConsistency(consistency.clone()),
            false,
        ))
    }

    /// The participants a peer reported as sending it a share that failed authentication, by
    /// index, with that peer's identity, but for those `already_in` the sum; each is recorded
    /// to sit out the round's retries.
    fn accusations(
        &mut self,
        answers: &BTreeMap<u16, Result<Message, LeftOut>>,
        already_in: impl Fn(u16) -> bool,
    ) -> BTreeMap<u16, String> {
        let mut accused = BTreeMap::new();
        for (index, answer) in answers {
            let Ok(Message::Refused(Refused {
                reason: RefusalReason::ShareAuthentication { from },
                ..
            })) = answer
            else {
                continue;
            };
            if already_in(*from) {
                continue;
            }
            let (Some(sender), Some(peer)) = (
                self.identity(*from).filter(|_| from != index),
                self.identity(*index),
            ) else {
                continue;
            };
            let (sender, peer) = (sender.to_owned(), peer.to_owned());
            warn!(node = %sender, %peer, "a peer could not authenticate this node's secure-aggregation share; leaving it out of the round");
            if !self.accused.iter().any(|(who, _)| *who == sender) {
                self.accused
                    .push((sender, LeftOut::ShareAuthentication { peer: peer.clone() }));
            }
            accused.entry(*from).or_insert(peer);
        }
        accused
    }

    /// Phase 4 over: the survivor set with every signature on it, for the signers to unmask.
    fn signatures(
        &mut self,
        mut server: ExpectSignatures,
        answers: BTreeMap<u16, Result<Message, LeftOut>>,
    ) -> Result<Progress, AttemptFailure> {
        let verifier = self
            .secure
            .as_ref()
            .map(|s| s.verifier.clone())
            .ok_or(AttemptFailure::Over)?;
        self.take(answers, |_, index, message| match message {
            Message::SecAggSignature(signature) => server
                .handle_signature(index, signature, verifier.as_ref())
                .map_err(violation),
            other => Err(LeftOut::from_unexpected(other, "secagg_signature")),
        });
        let (server, unmask) = server.finish()?;
        let participants = server.participants();
        self.stage = Stage::Unmasking(server);
        Ok(self.ask(
            Some(Phase::Consistency),
            &participants,
            |_| Message::SecAggUnmask(unmask.clone()),
            false,
        ))
    }

    /// Phase 5 over: the masks removed; the sum holds the masked inputs of exactly the phase-3
    /// survivors, including any that then failed to unmask.
    fn unmask(
        &mut self,
        mut server: ExpectUnmasking,
        answers: BTreeMap<u16, Result<Message, LeftOut>>,
    ) -> Result<Progress, AttemptFailure> {
        self.take(answers, |_, index, message| match message {
            Message::SecAggUnmaskShares(response) => {
                server.handle_response(index, response).map_err(violation)
            }
            other => Err(LeftOut::from_unexpected(other, "secagg_unmask_shares")),
        });
        let survivors = server.survivors();
        let sum = server.finish()?;
        let secure = self.secure.as_ref().ok_or(AttemptFailure::Over)?;
        // Kept as words, range-checked now and decoded a piece at a time as it is read: the
        // decoded figures (twice the words' size) are never held whole.
        self.gathered.sum = RoundSum::Secure(SecureSum::new(
            secure.encoding.clone(),
            sum,
            survivors.len(),
        )?);
        let mut participants: Vec<String> = survivors
            .iter()
            .filter_map(|&i| self.identity(i).map(str::to_owned))
            .collect();
        participants.sort();
        self.gathered.participants = participants;
        Ok(self.finish())
    }

    /// The collection's outcome, once the sum is known.
    fn finish(&mut self) -> Progress {
        let mut gathered = std::mem::take(&mut self.gathered);
        gathered.dropped.append(&mut self.left_out_before);
        let result = if gathered.participants.len() < self.min_nodes {
            Err(AttemptFailure::TooFewAnswers {
                have: gathered.participants.len(),
                need: self.min_nodes,
            })
        } else {
            Ok(gathered)
        };
        self.outcome(result)
    }

    fn fail(mut self, failure: AttemptFailure) -> (Self, Progress) {
        let progress = self.outcome(Err(failure));
        (self, progress)
    }

    fn outcome(&mut self, result: Result<Gathered, AttemptFailure>) -> Progress {
        self.stage = Stage::Over;
        self.awaiting.clear();
        Progress::Done(Outcome {
            result,
            accused: std::mem::take(&mut self.accused),
            inputs_received: self.inputs_received,
        })
    }
}

/// A node's secure-aggregation message that broke the protocol.
fn violation(error: SecAggError) -> LeftOut {
    LeftOut::SecureAggregation {
        detail: error.to_string(),
    }
}
