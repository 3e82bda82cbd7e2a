//! A malicious coordinator for attack tests: driven by hand, holding the consortium's real
//! coordinator certificate, it admits real nodes (libtorch trainer) over QUIC on 127.0.0.1 and
//! sends any message to any node on a fresh stream, reading its answer.
//!
//! ```text
//!  test ─▶ HandCoordinator ── QUIC + mTLS ──▶ real nodes ─▶ egress log, privacy ledger
//!            │                                               (read back from their folders)
//!            └─ SecureExchange: the protocol's own server states, one step at a time,
//!               ExpectKeys → ExpectShares → ExpectMaskedInputs → ExpectSignatures →
//!               ExpectUnmasking,
//!               with hooks to deviate per node at each step, and Puppets: participants
//!               played inside the harness under certificates the consortium CA minted.
//! ```
//!
//! It does not check what the nodes answer: each test asserts that itself, from the answers and
//! from what the nodes' egress logs and ledgers say left them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use medfed_certs::{
    CertificateSigner, ConsortiumVerifier, Role, TlsFiles, Validity, make_request, sign_request,
};
use medfed_coordinator::CoordinatorConfig;
use medfed_coordinator::config::SecureAggregationConfig;
use medfed_node::egress::{EgressEntry, EgressLog};
use medfed_node::ledger::{LedgerEntry, PrivacyLedger};
use medfed_node::{NodeConfig, NodeError, NodeOutcome};
use medfed_protocol::codec::MAX_FRAME_LEN;
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::manifest::SignedManifest;
use medfed_protocol::messages::{
    Finished, Message, RoundKeys, RoundStart, SecAggSetup, StatsRequest, Welcome,
};
use medfed_protocol::model::{Model, ModelKind, ModelSpec};
use medfed_protocol::schema::Schema;
use medfed_protocol::secagg::MaskedInput;
use medfed_protocol::secagg::encoding::{BlockEncoding, UpdateEncoding, VectorEncoding};
use medfed_protocol::secagg::{
    ConsistencyRequest, DirectoryEntry, ExpectDirectory, ExpectKeys, ExpectMaskedInputs,
    ExpectShares, ExpectSignatures, ExpectUnmasking, KeyDirectory, Participant, ParticipantState,
    RoundParams, SecAggError, ShareDelivery, UnmaskRequest,
};
use medfed_protocol::stats::Standardization;
use medfed_protocol::transfer::split_model;
use medfed_transport::{Connection, Listener, MessageReader, peer_identity, send_message};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::task::JoinHandle;

use crate::Consortium;

/// How long a node has to connect, or to answer one request (local training included).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A coordinator driven by hand, with the real nodes it admitted.
pub struct HandCoordinator<'c> {
    /// Where the nodes' certificates, data and state folders are.
    consortium: &'c Consortium,
    /// Listens on 127.0.0.1 (QUIC and TCP) with the consortium's coordinator certificate.
    endpoint: Listener,
    /// The session `Welcome` announces and every request carries.
    session: u64,
    /// The plan whose signed task manifest `Welcome` carries: the coordinator configuration a
    /// real coordinator would have been started with. Requests built by [`Self::round_start`]
    /// and [`Self::setup`] follow it; a test departs from it on purpose.
    plan: CoordinatorConfig,
    /// The consortium model's architecture.
    spec: ModelSpec,
    /// The consortium schema.
    schema: Schema,
    /// Checks the survivors' signatures on the survivor set, as the real coordinator does.
    verifier: ConsortiumVerifier,
    /// The admitted nodes, by the identity in their certificates.
    nodes: BTreeMap<String, AdmittedNode>,
}

/// A real node the hand-driven coordinator admitted.
struct AdmittedNode {
    /// Its connection; each request goes on a fresh stream of it.
    connection: Connection,
    /// The certificate it presented (DER), relayed to its peers in a key directory.
    certificate: Vec<u8>,
    /// Its state folder, where its egress log and ledger are.
    state_dir: PathBuf,
    /// The node's task.
    task: JoinHandle<Result<NodeOutcome, NodeError>>,
}

impl<'c> HandCoordinator<'c> {
    /// Listens on an ephemeral loopback port with the consortium's coordinator certificate.
    /// `Welcome` will announce session `0x5eed` and one round, and the consortium's small MLP.
    pub fn bind(consortium: &'c Consortium) -> Self {
        let endpoint = Listener::bind(
            &consortium.certs.coordinator_tls(),
            "127.0.0.1:0".parse().expect("address"),
            None,
        )
        .expect("a loopback endpoint");
        let text = std::fs::read_to_string(&consortium.schema).expect("the schema file");
        let schema = Schema::parse(&text).expect("a valid schema");
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![8] },
            input_dim: schema.num_features(),
        };
        let verifier = ConsortiumVerifier::new(&consortium.certs.coordinator_tls())
            .expect("the consortium CA");
        Self {
            consortium,
            endpoint,
            session: 0x5eed,
            plan: consortium.coordinator_config(1, 3),
            spec,
            schema,
            verifier,
            nodes: BTreeMap::new(),
        }
    }

    /// Sets the training rounds that `Welcome` announces to nodes admitted from now on.
    pub fn set_rounds(&mut self, rounds: u64) {
        self.plan.task.rounds = rounds;
    }

    /// The plan (a coordinator configuration: one round, at least three hospitals, secure
    /// aggregation with the defaults) whose signed manifest `Welcome` carries to nodes admitted
    /// from now on.
    pub fn plan_mut(&mut self) -> &mut CoordinatorConfig {
        &mut self.plan
    }

    /// The signed task manifest of the current plan, as `Welcome` carries it.
    pub fn manifest(&self) -> SignedManifest {
        self.consortium.signed_manifest(&self.plan)
    }

    /// The address the nodes connect to.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("a bound endpoint")
    }

    /// The session every request carries.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The consortium schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Node `name`'s default configuration, pointed at this coordinator; a test may change it
    /// before [`Self::admit`].
    pub fn node_config(&self, name: &str) -> NodeConfig {
        self.consortium.node_config(name, self.addr())
    }

    /// Starts a real node with `config`, accepts its connection, reads its `Hello` and welcomes
    /// it. Returns the identity in its certificate.
    pub async fn admit(&mut self, config: NodeConfig) -> String {
        assert_eq!(
            config.coordinator,
            self.addr().into(),
            "the node must connect here"
        );
        let state_dir = config.state_dir.clone();
        let task = self.consortium.spawn_node(config);
        let connection = tokio::time::timeout(ANSWER_TIMEOUT, async {
            let incoming = self.endpoint.accept().await.expect("an open endpoint");
            incoming
                .accept()
                .await
                .expect("a TLS handshake with a consortium node")
        })
        .await
        .expect("the node connects");
        let (identity, certificate) = peer_identity(&connection).expect("a node certificate");
        let (mut send, recv) = connection.accept_bi().await.expect("the hello stream");
        match MessageReader::new(recv, MAX_FRAME_LEN).expect().await {
            Ok(Message::Hello(_)) => {}
            other => panic!("{identity} opened with {other:?}, not a hello"),
        }
        let welcome = Welcome {
            session: self.session,
            identity: identity.clone(),
            manifest: self.manifest(),
        };
        send_message(&mut send, &Message::Welcome(welcome))
            .await
            .expect("welcome sent");
        send.finish().await;
        let node = AdmittedNode {
            connection,
            certificate: certificate.to_vec(),
            state_dir,
            task,
        };
        self.nodes.insert(identity.clone(), node);
        identity
    }

    /// Admits real nodes `names`, one after the other, each with its default configuration.
    pub async fn admit_all(&mut self, names: &[&str]) {
        for name in names {
            let identity = self.admit(self.node_config(name)).await;
            assert_eq!(identity, *name);
        }
    }

    /// A model of the consortium's architecture, initialised from `seed`.
    pub fn model(&self, seed: u64) -> Model {
        Model::new(self.spec.clone(), self.spec.initial_parameters(seed)).expect("a valid model")
    }

    /// Sends `messages` to `node` on a fresh stream and reads its answer.
    pub async fn exchange(&self, node: &str, messages: &[Message]) -> Message {
        let connection = &self.node(node).connection;
        let (mut send, recv) = connection
            .open_bi()
            .await
            .unwrap_or_else(|e| panic!("{node}: cannot open a stream: {e}"));
        for message in messages {
            // The node may stop reading once it has refused.
            if send_message(&mut send, message).await.is_err() {
                break;
            }
        }
        send.finish().await;
        let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
        let answer = async {
            let first = reader.expect().await?;
            // A masked input comes in pieces; this coordinator reads them whole.
            let Message::SecAggInputChunk(mut piece) = first else {
                return Ok::<_, medfed_transport::ChannelError>(first);
            };
            let (session, round) = (piece.session, piece.round);
            let mut values = Vec::new();
            loop {
                values.extend_from_slice(&piece.values);
                if values.len() >= piece.total as usize {
                    break;
                }
                match reader.expect().await? {
                    Message::SecAggInputChunk(next) => piece = next,
                    other => return Ok(other),
                }
            }
            Ok(Message::SecAggInput(MaskedInput {
                session,
                round,
                values,
            }))
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("{node} gave no well-formed answer: {e}"),
            Err(_) => panic!("{node} did not answer within {ANSWER_TIMEOUT:?}"),
        }
    }

    /// Sends one request to `node` and reads its answer.
    pub async fn ask(&self, node: &str, request: &Message) -> Message {
        self.exchange(node, std::slice::from_ref(request)).await
    }

    /// Pushes `model` to `node` as round `round`'s model; returns the node's answer.
    pub async fn push(&self, node: &str, model: &Model, round: u64) -> Message {
        let (offer, chunks) = split_model(model, self.session, round);
        let mut messages = vec![Message::ModelOffer(offer)];
        messages.extend(chunks.into_iter().map(Message::ModelChunk));
        self.exchange(node, &messages).await
    }

    /// Pushes `model` to every admitted node and checks that each holds it.
    pub async fn push_all(&self, model: &Model, round: u64) {
        for node in self.nodes.keys() {
            let answer = self.push(node, model, round).await;
            assert!(
                matches!(answer, Message::ModelReceived(ref r) if r.hash == model.hash()),
                "{node} did not take the model: {answer:?}"
            );
        }
    }

    /// A statistics request, under secure aggregation when `secure` is given.
    pub fn stats_request(&self, secure: Option<SecAggSetup>) -> Message {
        Message::StatsRequest(StatsRequest {
            session: self.session,
            round: 0,
            secure_aggregation: secure,
        })
    }

    /// A request for round `round` (attempt `attempt`) on `model`, with the plan's training
    /// plan for the round and the identity standardisation; it trains when `train`.
    pub fn round_start(
        &self,
        model: &Model,
        round: u64,
        attempt: u32,
        train: bool,
        secure: Option<SecAggSetup>,
    ) -> RoundStart {
        RoundStart {
            session: self.session,
            round,
            attempt,
            model_hash: model.hash(),
            train,
            evaluate: self.evaluates(round, train),
            score_bins: self.plan.task.score_bins,
            decision_threshold: self.plan.task.decision_threshold,
            plan: self.plan.task.plan(round),
            standardization: Standardization::identity(self.schema.num_features()),
            secure_aggregation: secure,
        }
    }

    /// The figures a statistics request collects.
    pub fn stats_figures(&self) -> Figures {
        Figures::Stats {
            len: self.schema.stats_len(),
        }
    }

    /// Whether round `round` evaluates, by the plan's evaluation schedule.
    pub fn evaluates(&self, round: u64, train: bool) -> bool {
        self.manifest().manifest.releases.evaluates(round, train)
    }

    /// The figures round `round` on `model` collects.
    pub fn round_figures(&self, model: &Model, round: u64, train: bool) -> Figures {
        Figures::Round(RoundLayout {
            params: model.params.len(),
            train,
            evaluate: self.evaluates(round, train),
            groups: self.schema.audit_groups().len(),
            bins: self.plan.task.score_bins,
            distributed: false,
        })
    }

    /// The secure-aggregation setup an honest coordinator would send for `figures` in `round`
    /// over `members` (in that order, indices from 1): everyone pairs with everyone, the
    /// default threshold, a fresh graph seed and the default update encoding.
    pub fn setup(&self, round: u64, members: &[&str], figures: &Figures) -> SecAggSetup {
        let update_encoding = SecureAggregationConfig::default().update_encoding(members.len());
        let encoding = figures.encoding(&update_encoding);
        let participants: Vec<Participant> = members
            .iter()
            .zip(1u16..)
            .map(|(name, index)| Participant {
                index,
                identity: (*name).to_owned(),
            })
            .collect();
        let mut params = RoundParams {
            session: self.session,
            round,
            participants,
            threshold: 0,
            neighbours: None,
            graph_seed: rand::random(),
            vector_len: encoding.encoded_len(),
            encoding_digest: encoding.task_digest(&self.manifest().manifest.digest().0),
        };
        params.threshold = RoundParams::default_threshold(params.holders_per_secret());
        SecAggSetup {
            params,
            update_encoding,
        }
    }

    /// Everything `node` recorded in its egress log.
    pub fn egress(&self, node: &str) -> Vec<EgressEntry> {
        EgressLog::read(&self.node(node).state_dir).expect("a readable egress log")
    }

    /// Every release in `node`'s privacy ledger.
    pub fn ledger(&self, node: &str) -> Vec<LedgerEntry> {
        PrivacyLedger::read(&self.node(node).state_dir).expect("a readable privacy ledger")
    }

    /// The certificate `node` presented (DER).
    pub fn certificate(&self, node: &str) -> &[u8] {
        &self.node(node).certificate
    }

    /// Tells every node that training is over (the plan's last round, final model `model`) and
    /// waits for each to end; returns how each ended.
    pub async fn finish(self, model: &Model) -> BTreeMap<String, Result<NodeOutcome, NodeError>> {
        let done = Message::Finished(Finished {
            session: self.session,
            round: self.plan.task.rounds,
            model_hash: model.hash(),
        });
        for name in self.nodes.keys() {
            let answer = self.ask(name, &done).await;
            assert!(
                matches!(answer, Message::Finished(_)),
                "{name} answered {answer:?}"
            );
        }
        let mut outcomes = BTreeMap::new();
        for (name, node) in self.nodes {
            let ended = tokio::time::timeout(ANSWER_TIMEOUT, node.task)
                .await
                .unwrap_or_else(|_| panic!("{name} did not stop"))
                .unwrap_or_else(|e| panic!("{name}'s task failed: {e}"));
            outcomes.insert(name, ended);
        }
        outcomes
    }

    fn node(&self, name: &str) -> &AdmittedNode {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("{name} was not admitted"))
    }
}

/// What an exchange collects from each node, which fixes its secure-aggregation encoding.
#[derive(Clone, Debug)]
pub enum Figures {
    /// Federated statistics: `len` real sums, each encoded wide.
    Stats {
        /// Figures per node.
        len: usize,
    },
    /// A round vector of this layout.
    Round(RoundLayout),
}

impl Figures {
    /// The secure-aggregation encoding of these figures, with `update` for a model update.
    pub fn encoding(&self, update: &UpdateEncoding) -> VectorEncoding {
        match self {
            Self::Stats { len } => VectorEncoding::new(vec![(*len, BlockEncoding::Wide)]),
            Self::Round(layout) => layout.encoding(update),
        }
    }
}

/// A participant played by the harness itself, under a certificate of the consortium CA (which
/// the coordinator's operator also runs, and which signs any name): a stranger, or a second key
/// under a real hospital's name. It follows the protocol with the participant state machine,
/// with figures of its choosing (zeros unless set), so that a sum over {victim, puppets} is the
/// victim's figures.
pub struct Puppet {
    /// The name in its certificate.
    identity: String,
    /// Its certificate (DER).
    certificate: Vec<u8>,
    /// Signs its round keys with its certificate's key.
    signer: CertificateSigner,
    /// Checks its peers' keys, as a node would.
    verifier: ConsortiumVerifier,
    /// The figures it puts into the sum; zeros when `None`.
    figures: Option<Vec<f64>>,
    /// Where it stands in the exchange.
    state: ParticipantState,
}

impl Puppet {
    /// Mints a fresh key and a certificate for `name` with the consortium's CA, as its operator
    /// can (any name, a member's included; each call makes another key).
    pub fn mint(consortium: &Consortium, name: &str) -> Self {
        let site = consortium
            .dir
            .path()
            .join("minted")
            .join(format!("{name}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&site).expect("a folder for the minted certificate");
        let csr = make_request(&site, name).expect("a signing request");
        let cert = site.join(format!("{name}.pem"));
        sign_request(
            &consortium.certs.dir,
            &csr,
            &cert,
            Role::Node,
            Validity::days_from_now(30),
            &[],
        )
        .expect("the consortium CA signs");
        let certificate = CertificateDer::from_pem_file(&cert)
            .expect("a PEM certificate")
            .to_vec();
        let tls = TlsFiles {
            ca_cert: consortium.certs.ca_cert.clone(),
            cert,
            key: site.join(format!("{name}.key")),
            crl: None,
            allow_expired_crl: false,
        };
        Self {
            identity: name.to_owned(),
            certificate,
            signer: CertificateSigner::load(&tls.key).expect("its key"),
            verifier: ConsortiumVerifier::new(&tls).expect("the consortium CA"),
            figures: None,
            state: ParticipantState::Done,
        }
    }

    /// The name in its certificate.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Puts `figures` into the sum instead of zeros.
    pub fn with_figures(mut self, figures: Vec<f64>) -> Self {
        self.figures = Some(figures);
        self
    }

    /// Its signed round keys for `setup`, over its encoded figures.
    fn keys(&mut self, setup: &SecAggSetup, encoding: &VectorEncoding) -> Message {
        let mut rng = rand::rng();
        let params = setup.params.clone();
        let me = params
            .index_of(&self.identity)
            .unwrap_or_else(|| panic!("puppet {} is not a participant", self.identity));
        let figures = self
            .figures
            .clone()
            .unwrap_or_else(|| vec![0.0; encoding.value_len()]);
        let input = encoding
            .encode(&figures, &mut rng)
            .expect("the puppet's figures encode");
        let (state, keys) = ExpectDirectory::new(params, me, input, &self.signer, &mut rng)
            .expect("the puppet's keys");
        self.state = ParticipantState::Directory(state);
        Message::SecAggKeys(RoundKeys {
            keys,
            privacy: None,
        })
    }

    /// Its answer to a step after the keys, following the protocol.
    fn answer(&mut self, request: &Message) -> Message {
        let mut rng = rand::rng();
        let answer = match request {
            Message::SecAggDirectory(directory) => self
                .state
                .handle_directory(directory, &self.verifier, &mut rng)
                .map(Message::SecAggShares),
            Message::SecAggDelivery(delivery) => self
                .state
                .handle_delivery(delivery)
                .map(Message::SecAggInput),
            Message::SecAggConsistency(request) => self
                .state
                .handle_consistency(request, &self.signer, &mut |_| Ok(()))
                .map(Message::SecAggSignature),
            Message::SecAggUnmask(request) => self
                .state
                .handle_unmask(request, &self.verifier, &mut |_| Ok(()))
                .map(Message::SecAggUnmaskShares),
            other => panic!("a puppet is not asked {}", other.kind()),
        };
        answer.unwrap_or_else(|e| panic!("puppet {} broke down: {e}", self.identity))
    }
}

/// One step of a secure-aggregation exchange, named after what the coordinator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The request (`StatsRequest` or `RoundStart`) with its setup; answered with keys.
    Request,
    /// The key directory; answered with encrypted shares.
    Directory,
    /// The share delivery; answered with the masked input.
    Delivery,
    /// The consistency request (the survivor set); answered with a signature on it.
    Consistency,
    /// The unmask request (the survivor set and the signatures on it); answered with
    /// unmasking shares.
    Unmask,
}

impl Step {
    /// The message kind an honest participant answers this step with.
    pub fn expected_answer(self) -> &'static str {
        match self {
            Self::Request => "secagg_keys",
            Self::Directory => "secagg_shares",
            Self::Delivery => "secagg_input",
            Self::Consistency => "secagg_signature",
            Self::Unmask => "secagg_unmask_shares",
        }
    }
}

/// One participant's answer to one step, and what the coordinator's state machine made of it.
#[derive(Debug)]
pub struct Answer {
    /// The step.
    pub step: Step,
    /// Who answered.
    pub node: String,
    /// What it sent.
    pub message: Message,
    /// Whether the server state took it.
    pub verdict: Verdict,
}

/// What the coordinator's state machine made of an answer.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Taken into the exchange.
    Accepted,
    /// The step's message, refused by the state machine.
    Refused(SecAggError),
    /// Not the step's message (a decline, a refusal): the participant dropped out.
    Dropped,
    /// The answer to a survivor set a hook changed: kept aside from the server state, which
    /// checks signatures on the set it knows.
    KeptAside,
}

impl From<Result<(), SecAggError>> for Verdict {
    fn from(taken: Result<(), SecAggError>) -> Self {
        match taken {
            Ok(()) => Self::Accepted,
            Err(e) => Self::Refused(e),
        }
    }
}

/// A per-node change to what a step sends.
type Hook<T> = Box<dyn FnMut(&str, &mut T) + Send>;

/// A per-node change to an answer, before the server state takes it.
type AnswerHook = Box<dyn FnMut(Step, &str, &mut Message) + Send>;

/// Per-node deviations from the honest exchange; each is called once per node and step, with
/// the node's identity and the message about to go to it (or, for `answer`, the answer about to
/// go into the server state).
#[derive(Default)]
struct Hooks {
    setup: Option<Hook<SecAggSetup>>,
    directory: Option<Hook<KeyDirectory>>,
    delivery: Option<Hook<ShareDelivery>>,
    consistency: Option<Hook<ConsistencyRequest>>,
    unmask: Option<Hook<UnmaskRequest>>,
    answer: Option<AnswerHook>,
}

/// Where the coordinator's side of an exchange stands.
enum Phase {
    /// Nothing sent yet.
    Ready(ExpectKeys),
    /// Requests sent; keys collected.
    Keys(ExpectKeys),
    /// Directory sent; share packages collected.
    Shares(ExpectShares),
    /// Shares delivered; masked inputs summed.
    Inputs(ExpectMaskedInputs),
    /// Survivor set sent; signatures on it collected.
    Signatures(ExpectSignatures),
    /// Unmask request sent; unmasking shares collected.
    Unmasking(ExpectUnmasking),
    /// Summed, failed, or taken apart.
    Over,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Self::Ready(_) => "ready",
            Self::Keys(_) => "keys collected",
            Self::Shares(_) => "shares collected",
            Self::Inputs(_) => "inputs collected",
            Self::Signatures(_) => "signatures collected",
            Self::Unmasking(_) => "unmasking shares collected",
            Self::Over => "over",
        }
    }
}

/// One secure-aggregation exchange run by the hand-driven coordinator with the protocol's own
/// server state machines: honest unless told to deviate, one step at a time or all at once.
///
/// Each step sends one message to every participant still in the exchange (in index order,
/// one after the other), feeds each answer to the server state, and records it in
/// [`Self::answers`]. A participant that answers otherwise is left out of later steps, as the
/// real coordinator would leave it out; [`Self::ignore`] leaves one out on purpose. With a
/// consistency or unmask hook set, the coordinator deviates: it asks for unmasking shares even
/// when its own state would stop (too few signatures on the set it knows), and the step then
/// still fails.
pub struct SecureExchange {
    /// The setup the server side works with (and every node gets, unless a hook changes it).
    setup: SecAggSetup,
    /// The figures' encoding, to decode the sum.
    encoding: VectorEncoding,
    /// Builds the request that opens the exchange from a node's setup.
    request: Box<dyn Fn(SecAggSetup) -> Message + Send + Sync>,
    /// Participants the harness plays, by identity.
    puppets: BTreeMap<String, Puppet>,
    /// Nodes no longer sent anything.
    ignored: BTreeSet<String>,
    /// Every signature a participant returned, by the survivor set (ascending) it was asked to
    /// sign: an unmask request for a set is sent with those on that set.
    signed: BTreeMap<Vec<u16>, Vec<(u16, Vec<u8>)>>,
    /// Whether keys the server state refuses are relayed in the directory all the same.
    relay_refused_keys: bool,
    /// Those keys, with their certificates.
    relayed: Vec<DirectoryEntry>,
    /// Deviations.
    hooks: Hooks,
    /// The server side.
    phase: Phase,
    /// Every answer so far, in order.
    pub answers: Vec<Answer>,
}

/// Why a step of a [`SecureExchange`] could not go on.
#[derive(Debug, PartialEq)]
pub enum ExchangeFailure {
    /// The server state refused to end the phase (too few participants answered, say).
    Server(SecAggError),
    /// The step was called out of order.
    OutOfOrder {
        /// The step asked for.
        step: &'static str,
        /// Where the exchange stood.
        phase: &'static str,
    },
}

impl fmt::Display for ExchangeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(e) => write!(f, "the exchange cannot go on: {e}"),
            Self::OutOfOrder { step, phase } => {
                write!(f, "step {step} asked for when the exchange is {phase}")
            }
        }
    }
}

impl From<SecAggError> for ExchangeFailure {
    fn from(e: SecAggError) -> Self {
        Self::Server(e)
    }
}

impl SecureExchange {
    /// An exchange of `figures` under `setup`, opened by the message `request` builds from each
    /// node's setup.
    pub fn new(
        setup: SecAggSetup,
        figures: &Figures,
        request: impl Fn(SecAggSetup) -> Message + Send + Sync + 'static,
    ) -> Self {
        let encoding = figures.encoding(&setup.update_encoding);
        let server = ExpectKeys::new(setup.params.clone()).expect("honest round parameters");
        Self {
            setup,
            encoding,
            request: Box::new(request),
            puppets: BTreeMap::new(),
            ignored: BTreeSet::new(),
            signed: BTreeMap::new(),
            relay_refused_keys: false,
            relayed: Vec::new(),
            hooks: Hooks::default(),
            phase: Phase::Ready(server),
            answers: Vec::new(),
        }
    }

    /// A statistics exchange over `members`, with an honest setup.
    pub fn stats(coordinator: &HandCoordinator<'_>, members: &[&str]) -> Self {
        let figures = coordinator.stats_figures();
        let setup = coordinator.setup(0, members, &figures);
        let session = coordinator.session();
        Self::new(setup, &figures, move |setup| {
            Message::StatsRequest(StatsRequest {
                session,
                round: 0,
                secure_aggregation: Some(setup),
            })
        })
    }

    /// A round exchange over `members` opened by `start` (whose own setup is replaced by each
    /// node's), with an honest setup for a round on `model`.
    pub fn round(
        coordinator: &HandCoordinator<'_>,
        model: &Model,
        start: RoundStart,
        members: &[&str],
    ) -> Self {
        let figures = coordinator.round_figures(model, start.round, start.train);
        let setup = coordinator.setup(start.round, members, &figures);
        Self::new(setup, &figures, move |setup| {
            Message::RoundStart(RoundStart {
                secure_aggregation: Some(setup),
                ..start.clone()
            })
        })
    }

    /// Plays `puppet` in this exchange; it must be one of the setup's participants.
    pub fn with_puppet(mut self, puppet: Puppet) -> Self {
        assert!(
            self.setup.params.index_of(puppet.identity()).is_some(),
            "puppet {} is not a participant",
            puppet.identity()
        );
        self.puppets.insert(puppet.identity.clone(), puppet);
        self
    }

    /// Changes the setup each node is sent.
    pub fn on_setup(mut self, hook: impl FnMut(&str, &mut SecAggSetup) + Send + 'static) -> Self {
        self.hooks.setup = Some(Box::new(hook));
        self
    }

    /// Changes the key directory each node is sent.
    pub fn on_directory(
        mut self,
        hook: impl FnMut(&str, &mut KeyDirectory) + Send + 'static,
    ) -> Self {
        self.hooks.directory = Some(Box::new(hook));
        self
    }

    /// Changes the share delivery each node is sent.
    pub fn on_delivery(
        mut self,
        hook: impl FnMut(&str, &mut ShareDelivery) + Send + 'static,
    ) -> Self {
        self.hooks.delivery = Some(Box::new(hook));
        self
    }

    /// Changes the survivor set each node is asked to sign.
    pub fn on_consistency(
        mut self,
        hook: impl FnMut(&str, &mut ConsistencyRequest) + Send + 'static,
    ) -> Self {
        self.hooks.consistency = Some(Box::new(hook));
        self
    }

    /// Changes the unmask request each node is sent. A request whose survivor set the hook
    /// changes, and whose signatures it leaves alone, goes with every signature the
    /// participants returned on that set (a coordinator relaying what it has).
    pub fn on_unmask(
        mut self,
        hook: impl FnMut(&str, &mut UnmaskRequest) + Send + 'static,
    ) -> Self {
        self.hooks.unmask = Some(Box::new(hook));
        self
    }

    /// Changes an answer before the server state takes it (as a malicious participant could
    /// have sent it); [`Self::answers`] keeps what was really sent.
    pub fn on_answer(
        mut self,
        hook: impl FnMut(Step, &str, &mut Message) + Send + 'static,
    ) -> Self {
        self.hooks.answer = Some(Box::new(hook));
        self
    }

    /// Relays in the key directory the keys the server state refuses too (those signed for
    /// other round parameters, say), and asks their owners for shares like the others: a
    /// coordinator that does not check what it relays.
    pub fn relay_refused_keys(mut self) -> Self {
        self.relay_refused_keys = true;
        self
    }

    /// Sends `node` nothing more, as if it had dropped out.
    pub fn ignore(&mut self, node: &str) {
        self.ignored.insert(node.to_owned());
    }

    /// The setup the server side works with.
    pub fn setup(&self) -> &SecAggSetup {
        &self.setup
    }

    /// Step 1: sends each participant the request with its setup and collects the keys.
    pub async fn request(
        &mut self,
        coordinator: &HandCoordinator<'_>,
    ) -> Result<(), ExchangeFailure> {
        let Phase::Ready(mut server) = self.take_phase("request")? else {
            unreachable!("take_phase checked the phase")
        };
        for participant in self.setup.params.participants.clone() {
            let (index, name) = (participant.index, participant.identity);
            if self.ignored.contains(&name) {
                continue;
            }
            let mut setup = self.setup.clone();
            if let Some(hook) = &mut self.hooks.setup {
                hook(&name, &mut setup);
            }
            let (sent, certificate) = match self.puppets.get_mut(&name) {
                Some(puppet) => (
                    puppet.keys(&setup, &self.encoding),
                    puppet.certificate.clone(),
                ),
                None => (
                    coordinator.ask(&name, &(self.request)(setup)).await,
                    coordinator.certificate(&name).to_vec(),
                ),
            };
            let mut refused = None;
            self.take_answer(Step::Request, &name, sent, |message| match message {
                Message::SecAggKeys(RoundKeys { keys, .. }) => {
                    let taken = server.handle_keys(index, keys.clone(), certificate.clone());
                    if taken.is_err() {
                        refused = Some(DirectoryEntry { keys, certificate });
                    }
                    taken.into()
                }
                _ => Verdict::Dropped,
            });
            if let (true, Some(entry)) = (self.relay_refused_keys, refused) {
                self.relayed.push(entry);
                self.ignored.remove(&name);
            }
        }
        self.phase = Phase::Keys(server);
        Ok(())
    }

    /// Step 2: ends the key phase and sends the directory; collects the share packages.
    pub async fn directory(
        &mut self,
        coordinator: &HandCoordinator<'_>,
    ) -> Result<(), ExchangeFailure> {
        let Phase::Keys(server) = self.take_phase("directory")? else {
            unreachable!("take_phase checked the phase")
        };
        let (mut server, mut directory) = server.finish()?;
        let mut addressees = server.participants();
        for entry in &self.relayed {
            directory.entries.push(entry.clone());
            addressees.push(entry.keys.index);
        }
        directory.entries.sort_by_key(|entry| entry.keys.index);
        addressees.sort_unstable();
        for index in addressees {
            let Some(name) = self.addressee(index) else {
                continue;
            };
            let mut directory = directory.clone();
            if let Some(hook) = &mut self.hooks.directory {
                hook(&name, &mut directory);
            }
            let sent = self
                .send(coordinator, &name, Message::SecAggDirectory(directory))
                .await;
            self.take_answer(Step::Directory, &name, sent, |message| match message {
                Message::SecAggShares(package) => server.handle_package(index, package).into(),
                _ => Verdict::Dropped,
            });
        }
        self.phase = Phase::Shares(server);
        Ok(())
    }

    /// Step 3: ends the share phase and delivers each participant its shares; collects (and
    /// sums) the masked inputs.
    pub async fn deliver(
        &mut self,
        coordinator: &HandCoordinator<'_>,
    ) -> Result<(), ExchangeFailure> {
        let Phase::Shares(server) = self.take_phase("deliver")? else {
            unreachable!("take_phase checked the phase")
        };
        let (mut server, deliveries) = server.finish()?;
        for (index, mut delivery) in deliveries {
            let Some(name) = self.addressee(index) else {
                continue;
            };
            if let Some(hook) = &mut self.hooks.delivery {
                hook(&name, &mut delivery);
            }
            let sent = self
                .send(coordinator, &name, Message::SecAggDelivery(delivery))
                .await;
            self.take_answer(Step::Delivery, &name, sent, |message| match message {
                Message::SecAggInput(input) => server.handle_input(index, &input).into(),
                _ => Verdict::Dropped,
            });
        }
        self.phase = Phase::Inputs(server);
        Ok(())
    }

    /// Step 4: ends the input phase and sends the survivor set (`U3`) to sign; collects the
    /// signatures.
    pub async fn consistency(
        &mut self,
        coordinator: &HandCoordinator<'_>,
    ) -> Result<(), ExchangeFailure> {
        let Phase::Inputs(server) = self.take_phase("consistency")? else {
            unreachable!("take_phase checked the phase")
        };
        let (mut server, honest) = server.finish()?;
        for index in server.participants() {
            let Some(name) = self.addressee(index) else {
                continue;
            };
            let mut request = honest.clone();
            if let Some(hook) = &mut self.hooks.consistency {
                hook(&name, &mut request);
            }
            let deviated = request.survivors != honest.survivors;
            let mut set = request.survivors.clone();
            set.sort_unstable();
            let sent = self
                .send(coordinator, &name, Message::SecAggConsistency(request))
                .await;
            if let Message::SecAggSignature(signature) = &sent {
                let signed = self.signed.entry(set).or_default();
                signed.push((index, signature.signature.clone()));
            }
            self.take_answer(Step::Consistency, &name, sent, |message| match message {
                Message::SecAggSignature(_) if deviated => Verdict::KeptAside,
                Message::SecAggSignature(signature) => server
                    .handle_signature(index, signature, &coordinator.verifier)
                    .into(),
                _ => Verdict::Dropped,
            });
        }
        self.phase = Phase::Signatures(server);
        Ok(())
    }

    /// Step 5: ends the consistency phase and sends the survivor set with the signatures on it;
    /// collects unmasking shares.
    pub async fn unmask(
        &mut self,
        coordinator: &HandCoordinator<'_>,
    ) -> Result<(), ExchangeFailure> {
        let Phase::Signatures(server) = self.take_phase("unmask")? else {
            unreachable!("take_phase checked the phase")
        };
        let survivors = server.participants();
        // A coordinator that deviates asks for shares whatever its own state says; the server
        // side is then over, and the step still fails.
        let (mut server, request) = match server.finish() {
            Ok((server, request)) => (Ok(server), request),
            Err(e) if self.deviates() => {
                let request = UnmaskRequest {
                    session: self.setup.params.session,
                    round: self.setup.params.round,
                    signatures: self.signed.get(&survivors).cloned().unwrap_or_default(),
                    survivors: survivors.clone(),
                };
                (Err(ExchangeFailure::Server(e)), request)
            }
            Err(e) => return Err(e.into()),
        };
        for index in survivors {
            let Some(name) = self.addressee(index) else {
                continue;
            };
            let mut sent_request = request.clone();
            if let Some(hook) = &mut self.hooks.unmask {
                hook(&name, &mut sent_request);
            }
            if sent_request.survivors != request.survivors
                && sent_request.signatures == request.signatures
            {
                let mut set = sent_request.survivors.clone();
                set.sort_unstable();
                sent_request.signatures = self.signed.get(&set).cloned().unwrap_or_default();
            }
            let sent = self
                .send(coordinator, &name, Message::SecAggUnmask(sent_request))
                .await;
            self.take_answer(Step::Unmask, &name, sent, |message| {
                match (message, server.as_mut()) {
                    (Message::SecAggUnmaskShares(response), Ok(server)) => {
                        server.handle_response(index, response).into()
                    }
                    (Message::SecAggUnmaskShares(_), Err(_)) => Verdict::KeptAside,
                    _ => Verdict::Dropped,
                }
            });
        }
        self.phase = Phase::Unmasking(server?);
        Ok(())
    }

    /// Step 6: removes the masks and decodes the sum of the survivors' figures.
    pub fn sum(&mut self) -> Result<Vec<f64>, ExchangeFailure> {
        let Phase::Unmasking(server) = self.take_phase("sum")? else {
            unreachable!("take_phase checked the phase")
        };
        let survivors = server.survivors().len();
        let sum = server.finish()?;
        Ok(self.encoding.decode_sum(&sum, survivors)?)
    }

    /// Every step from the request to the sum.
    pub async fn run(
        &mut self,
        coordinator: &HandCoordinator<'_>,
    ) -> Result<Vec<f64>, ExchangeFailure> {
        self.request(coordinator).await?;
        self.directory(coordinator).await?;
        self.deliver(coordinator).await?;
        self.consistency(coordinator).await?;
        self.unmask(coordinator).await?;
        self.sum()
    }

    /// The answers `node` gave, in order.
    pub fn answers_of(&self, node: &str) -> impl Iterator<Item = &Answer> {
        let node = node.to_owned();
        self.answers.iter().filter(move |a| a.node == node)
    }

    /// Takes the phase out if it is the one `step` starts from.
    fn take_phase(&mut self, step: &'static str) -> Result<Phase, ExchangeFailure> {
        let ready = matches!(
            (&self.phase, step),
            (Phase::Ready(_), "request")
                | (Phase::Keys(_), "directory")
                | (Phase::Shares(_), "deliver")
                | (Phase::Inputs(_), "consistency")
                | (Phase::Signatures(_), "unmask")
                | (Phase::Unmasking(_), "sum")
        );
        if !ready {
            return Err(ExchangeFailure::OutOfOrder {
                step,
                phase: self.phase.name(),
            });
        }
        Ok(std::mem::replace(&mut self.phase, Phase::Over))
    }

    /// Whether a hook changes what the coordinator says about the survivors.
    fn deviates(&self) -> bool {
        self.hooks.consistency.is_some() || self.hooks.unmask.is_some()
    }

    /// The identity of participant `index`, unless it is to be sent nothing more.
    fn addressee(&self, index: u16) -> Option<String> {
        let name = self.setup.params.identity(index)?;
        (!self.ignored.contains(name)).then(|| name.to_owned())
    }

    /// Sends a step's message to a node (or hands it to a puppet); returns the answer.
    async fn send(
        &mut self,
        coordinator: &HandCoordinator<'_>,
        name: &str,
        message: Message,
    ) -> Message {
        match self.puppets.get_mut(name) {
            Some(puppet) => puppet.answer(&message),
            None => coordinator.ask(name, &message).await,
        }
    }

    /// Records `sent`, and what `take` (the server state) made of it after the answer hook. A
    /// participant whose answer the server did not take is sent nothing more.
    fn take_answer(
        &mut self,
        step: Step,
        name: &str,
        sent: Message,
        take: impl FnOnce(Message) -> Verdict,
    ) {
        let mut seen = sent.clone();
        if let Some(hook) = &mut self.hooks.answer {
            hook(step, name, &mut seen);
        }
        let verdict = take(seen);
        if !matches!(verdict, Verdict::Accepted | Verdict::KeptAside) {
            self.ignored.insert(name.to_owned());
        }
        self.answers.push(Answer {
            step,
            node: name.to_owned(),
            message: sent,
            verdict,
        });
    }
}
