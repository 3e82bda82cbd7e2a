//! The node's network driver: connects to the coordinator over QUIC (or TCP, where UDP is
//! blocked, directly or through the hospital's HTTP proxy) with mutual TLS, says
//! `Hello`, then answers the coordinator's requests, each on the stream it came on, until the
//! coordinator says training is finished. Lost connections are re-established with backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::path::Path;

use medfed_certs::coordinator_report_key_der;
use medfed_protocol::codec::{self, MAX_FRAME_LEN};
use medfed_protocol::manifest::Digest32;
use medfed_protocol::messages::{
    CLOSE_TASK_STOPPED, Hello, Message, PROTOCOL_VERSION, RefusalReason, Refused, Welcome,
};
use medfed_protocol::secagg::INPUT_CHUNK_WORDS;
use medfed_protocol::transfer::{ModelAssembler, PartialAssembly};
use medfed_transport::{
    ChannelError, Connection, ConnectionError, Connector, MessageReader, RecvStream, SendStream,
    peer_identity, send_frame,
};
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::NodeConfig;
use crate::egress::{EgressError, EgressLog};
use crate::hospital::Hospital;
use crate::manifest::ManifestRefusal;

/// First wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Application close code of a connection whose task manifest the node refused.
pub const MANIFEST_REFUSED: u32 = 3;
/// How long the coordinator has to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// How a node's run ended well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOutcome {
    /// The identity the coordinator saw.
    pub identity: String,
    /// Last round the coordinator completed.
    pub last_round: u64,
    /// Hash of the final global model, which this node holds.
    pub model_hash: String,
    /// Digest of the task manifest the node approved and followed.
    pub manifest: String,
}

/// Runs the node until the coordinator finishes training, or a fatal error.
pub async fn run(config: &NodeConfig, hospital: Hospital) -> Result<NodeOutcome, NodeError> {
    if !cfg!(feature = "fault-injection")
        && (config.danger_crash_after.is_some() || config.danger_stall.is_some())
    {
        return Err(NodeError::NoFaultInjection);
    }
    let network = &config.network;
    let endpoint = Connector::new(
        &config.tls,
        network.transport,
        network.quic_timeout,
        network.proxy.clone(),
    )?;
    let egress = Mutex::new(EgressLog::open(&config.state_dir)?);
    let hospital = Arc::new(Mutex::new(hospital));
    // What a model push cut short left: kept across reconnections, so that the next push of
    // that model resumes after the chunks already checked.
    let partial = Mutex::new(None);
    let mut reconnect = Reconnect::default();
    loop {
        match session(
            &endpoint,
            config,
            &hospital,
            &egress,
            &partial,
            &mut reconnect,
        )
        .await
        {
            Ok(outcome) => {
                endpoint.close(0, b"finished");
                return Ok(outcome);
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                let Some(wait) = reconnect.failed(Instant::now(), config.reconnect_for) else {
                    return Err(NodeError::GaveUp {
                        after: config.reconnect_for,
                        last: e.to_string(),
                    });
                };
                warn!(error = %e, retry_in = ?wait, "connection to the coordinator lost");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// When to try the coordinator again: after a backoff that doubles from [`MIN_BACKOFF`] to
/// [`MAX_BACKOFF`], until it has been unreachable for `reconnect_for`.
///
/// An admission starts both afresh: a run of days may lose its connection many times (NAT
/// rebinding, VPN drops, coordinator restarts), and only an unbroken outage counts against
/// `reconnect_for`, not the time since the first loss of the run.
#[derive(Debug)]
struct Reconnect {
    /// The wait before the next attempt.
    backoff: Duration,
    /// When the coordinator was last lost, if the node has not been admitted since.
    unreachable_since: Option<Instant>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            backoff: MIN_BACKOFF,
            unreachable_since: None,
        }
    }
}

impl Reconnect {
    /// The coordinator admitted the node.
    fn admitted(&mut self) {
        *self = Self::default();
    }

    /// A connection attempt failed, or a connection was lost, at `now`: how long to wait before
    /// the next attempt, or `None` when the coordinator has been unreachable for `limit`.
    fn failed(&mut self, now: Instant, limit: Duration) -> Option<Duration> {
        let since = *self.unreachable_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= limit {
            return None;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(wait)
    }
}

/// One connection: handshake, Hello, then requests until `Finished` or the connection drops.
async fn session(
    endpoint: &Connector,
    config: &NodeConfig,
    hospital: &Arc<Mutex<Hospital>>,
    egress: &Mutex<EgressLog>,
    partial: &PartialSlot,
    reconnect: &mut Reconnect,
) -> Result<NodeOutcome, NodeError> {
    let connection = endpoint
        .connect(&config.coordinator, &config.server_name)
        .await
        .map_err(classify)?;
    let address = connection.remote_address();
    let transport = connection.kind();
    let welcome = hello(&connection, hospital, egress, partial).await?;
    let manifest = match approve(&connection, config, hospital, &welcome) {
        Ok(digest) => digest,
        Err(refusal) => {
            error!(%refusal, "refusing to join: the coordinator's task manifest is not acceptable");
            connection.close(MANIFEST_REFUSED, b"task manifest refused");
            return Err(NodeError::ManifestRefused(refusal));
        }
    };
    lock(hospital).enter_session(welcome.session, &welcome.identity);
    reconnect.admitted();
    let span = info_span!("node", node = %welcome.identity);
    async {
        info!(coordinator = %config.coordinator, %address, %transport, rounds = welcome.manifest.manifest.rounds, %manifest, "admitted by the coordinator");
        loop {
            let (send, recv) = connection.accept_bi().await.map_err(classify)?;
            match answer(send, recv, hospital, &welcome, config, egress, partial).await {
                Ok(None) => {}
                Ok(Some(outcome)) => {
                    connection.close(0, b"finished");
                    return Ok(outcome);
                }
                Err(e) => {
                    connection.close(1, b"node stopping");
                    return Err(e);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Checks the coordinator's signed task manifest: its signature with the Ed25519 key of the
/// certificate the coordinator presented on this connection (checked against the consortium
/// CA), then the plan against the hospital's policy; returns the approved manifest's digest.
fn approve(
    connection: &Connection,
    config: &NodeConfig,
    hospital: &Arc<Mutex<Hospital>>,
    welcome: &Welcome,
) -> Result<Digest32, ManifestRefusal> {
    let key_error = |e: &dyn std::fmt::Display| ManifestRefusal::CoordinatorKey(e.to_string());
    let (_, certificate) = peer_identity(connection).map_err(|e| key_error(&e))?;
    let key = coordinator_report_key_der(
        &certificate,
        Path::new("the coordinator's certificate"),
        &config.tls.ca_cert,
    )
    .map_err(|e| key_error(&e))?;
    let approval = lock(hospital).approve_manifest(&welcome.manifest, &key)?;
    Ok(approval.digest)
}

/// Sends `Hello` and waits for `Welcome`.
async fn hello(
    connection: &Connection,
    hospital: &Arc<Mutex<Hospital>>,
    egress: &Mutex<EgressLog>,
    partial: &PartialSlot,
) -> Result<Welcome, NodeError> {
    let (mut send, recv) = connection.open_bi().await.map_err(classify)?;
    let message = {
        let hospital = lock(hospital);
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            schema_digest: hospital.schema_digest(),
            model_hash: hospital.model_hash(),
            partial_model: lock(partial).as_ref().map(PartialAssembly::announce),
        })
    };
    let frame = record_egress(egress, &message)?;
    send_frame(&mut send, &frame)
        .await
        .map_err(|e| transport(connection, e))?;
    send.finish().await;
    let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
    let answer = tokio::time::timeout(WELCOME_TIMEOUT, reader.expect())
        .await
        .map_err(|_| NodeError::Connect("no answer to hello".into()))?
        .map_err(|e| transport(connection, e))?;
    match answer {
        Message::Welcome(welcome) => Ok(welcome),
        Message::Refused(refused) => Err(NodeError::Refused(refused.reason)),
        other => Err(NodeError::Protocol(format!(
            "expected welcome, got {}",
            other.kind()
        ))),
    }
}

/// Answers one request stream; `Some` when the coordinator said training is finished.
async fn answer(
    mut send: SendStream,
    recv: RecvStream,
    hospital: &Arc<Mutex<Hospital>>,
    welcome: &Welcome,
    config: &NodeConfig,
    egress: &Mutex<EgressLog>,
    partial: &PartialSlot,
) -> Result<Option<NodeOutcome>, NodeError> {
    // Only the test-only fault hooks read the configuration here.
    #[cfg(not(feature = "fault-injection"))]
    let _ = config;
    let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
    let request = match reader.expect().await {
        Ok(request) => request,
        Err(e) => {
            // A malformed request is the coordinator's fault: refuse it, keep the connection.
            warn!(error = %e, "bad request from the coordinator");
            return Ok(None);
        }
    };
    let mut finished = None;
    let reply = match request {
        Message::StatsRequest(request) => {
            info!("sending federated statistics");
            lock(hospital).handle_stats(&request)
        }
        Message::ModelOffer(offer) => {
            let (session, round) = (offer.session, offer.round);
            let received = receive_model(
                offer,
                &welcome.manifest.manifest.model,
                &mut reader,
                partial,
            );
            match received.await {
                Ok(model) => lock(hospital).accept_model(model, session, round),
                Err(reason) => Message::Refused(Refused {
                    session,
                    round,
                    reason,
                }),
            }
        }
        Message::RoundStart(start) => {
            let hospital = hospital.clone();
            let span = info_span!("round", round = start.round);
            let reply = tokio::task::spawn_blocking(move || {
                span.in_scope(|| lock(&hospital).handle_round(&start))
            })
            .await
            .map_err(|e| NodeError::Protocol(format!("local computation panicked: {e}")))?;
            if let Message::Declined(declined) = &reply {
                warn!(reason = %declined.reason, "declining the round");
            }
            reply
        }
        message @ (Message::SecAggDirectory(_)
        | Message::SecAggDelivery(_)
        | Message::SecAggConsistency(_)
        | Message::SecAggUnmask(_)) => {
            let hospital = hospital.clone();
            tokio::task::spawn_blocking(move || lock(&hospital).handle_secagg(&message))
                .await
                .map_err(|e| NodeError::Protocol(format!("secure aggregation panicked: {e}")))?
        }
        Message::SiteFigureRequest(request) => lock(hospital).handle_site_figure(&request),
        Message::Finished(done) => {
            let holds_final = lock(hospital).model_hash() == Some(done.model_hash);
            info!(round = done.round, model = %done.model_hash, holds_final, "training finished");
            finished = Some(NodeOutcome {
                identity: welcome.identity.clone(),
                manifest: welcome.manifest.manifest.digest().to_hex(),
                last_round: done.round,
                model_hash: done.model_hash.to_hex(),
            });
            Message::Finished(done)
        }
        other => Message::Refused(Refused {
            session: welcome.session,
            round: 0,
            reason: RefusalReason::UnexpectedMessage {
                got: other.kind().into(),
                expected: "a request".into(),
            },
        }),
    };
    #[cfg(feature = "fault-injection")]
    if let Some(stall) = config.danger_stall
        && reply.kind() == stall.before
        && reply.round() == Some(stall.round)
    {
        warn!(kind = stall.before, hold = ?stall.hold, "DANGER: holding the answer back on purpose (danger_stall)");
        tokio::time::sleep(stall.hold).await;
    }
    let frame = record_egress(egress, &reply)?;
    if let Err(e) = send_frame(&mut send, &frame).await {
        warn!(error = %e, "could not send the answer");
    }
    send.finish().await;
    #[cfg(feature = "fault-injection")]
    if let Some(point) = config.danger_crash_after
        && reply.kind() == point.after
        && reply.round() == Some(point.round)
    {
        // The crash comes once the answer is in the coordinator's hands, even on a slow machine.
        let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
        warn!(
            kind = point.after,
            round = point.round,
            "DANGER: crashing on purpose (danger_crash_after)"
        );
        return Err(NodeError::Crashed {
            after: point.after,
            round: point.round,
        });
    }
    // Let the answer reach the coordinator before a finished node closes its connection.
    if finished.is_some() {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    Ok(finished)
}

/// The part of a model a push cut short left this node with.
type PartialSlot = Mutex<Option<PartialAssembly>>;

/// Reads a model's chunks after its offer and checks each. An offer of another architecture
/// than the one `Welcome` announced is refused before anything is buffered for it. An offer
/// that resumes a push continues the checked chunks in `partial`; a stream cut short leaves the
/// chunks checked so far there for the next push.
async fn receive_model(
    offer: medfed_protocol::messages::ModelOffer,
    spec: &medfed_protocol::model::ModelSpec,
    reader: &mut MessageReader,
    partial: &PartialSlot,
) -> Result<medfed_protocol::model::Model, RefusalReason> {
    if offer.spec != *spec {
        return Err(RefusalReason::BadModel {
            // Neither architecture is echoed: a declared one may be long.
            detail: format!(
                "offered architecture differs from the consortium's ({} parameters)",
                spec.layout().len()
            ),
        });
    }
    let first_chunk = offer.first_chunk;
    let held = lock(partial).take();
    let mut assembler = ModelAssembler::resume(offer, held)?;
    if first_chunk > 0 {
        info!(
            first_chunk,
            "the model push resumes after the chunks this node holds"
        );
    }
    while !assembler.is_complete() {
        match reader.next().await {
            Ok(Some(Message::ModelChunk(chunk))) => assembler.push(chunk)?,
            Ok(Some(other)) => {
                return Err(RefusalReason::UnexpectedMessage {
                    got: other.kind().into(),
                    expected: "model_chunk".into(),
                });
            }
            // The stream was cut (or ended early): keep what was checked for the next push.
            Ok(None) | Err(_) => {
                let held = assembler.into_partial();
                let detail = match &held {
                    Some(held) => format!(
                        "the model stream ended after {} checked chunks; they are kept for the next push",
                        held.announce().chunks
                    ),
                    None => "the model stream ended before its first chunk".into(),
                };
                *lock(partial) = held;
                return Err(RefusalReason::BadModel { detail });
            }
        }
    }
    assembler.finish()
}

/// Frames a message and appends it to the egress log; the bytes may be sent only after this. A
/// masked input goes as consecutive pieces ([`MaskedInputChunk`]s, one frame each), which the
/// coordinator adds to its sum as they come; the log records them as the one masked input
/// they are, with every byte.
fn record_egress(egress: &Mutex<EgressLog>, message: &Message) -> Result<Vec<u8>, NodeError> {
    let encode = |e: codec::CodecError| NodeError::Protocol(e.to_string());
    let frame = match message {
        Message::SecAggInput(input) => {
            let mut frames = Vec::new();
            for chunk in input.chunks(INPUT_CHUNK_WORDS) {
                let piece = Message::SecAggInputChunk(chunk);
                codec::encode_frame(&piece, MAX_FRAME_LEN, &mut frames).map_err(encode)?;
            }
            frames
        }
        other => codec::frame(other).map_err(encode)?,
    };
    egress
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .record(message.round(), message.kind(), &frame)?;
    Ok(frame)
}

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error of a failed stream operation, preferring the connection's close reason.
fn transport(connection: &Connection, error: ChannelError) -> NodeError {
    match connection.close_reason() {
        Some(reason) => classify(reason),
        None => NodeError::Connect(error.to_string()),
    }
}

/// Turns a connection error into a node error, recognising TLS refusals and a coordinator
/// that gave up.
fn classify(error: ConnectionError) -> NodeError {
    match error {
        ConnectionError::ApplicationClosed { code, reason }
            if code == u64::from(CLOSE_TASK_STOPPED) =>
        {
            NodeError::TaskStopped(reason)
        }
        ConnectionError::TlsAlert { alert, detail } => NodeError::TlsRefused {
            alert: tls_alert_name(alert),
            detail,
        },
        other => NodeError::Connect(other.to_string()),
    }
}

/// Human meaning of the TLS alerts a refused node sees.
fn tls_alert_name(alert: u8) -> String {
    let meaning = match alert {
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired or not yet valid",
        46 => "certificate unknown (not issued by the consortium CA?)",
        48 => "unknown certificate authority",
        116 => "certificate required",
        120 => "no common application protocol (protocol version mismatch)",
        40 => "handshake failure",
        51 => "decrypt error (a signature did not verify: certificate from another CA?)",
        _ => "TLS alert",
    };
    format!("{meaning} (TLS alert {alert})")
}

/// Why a node stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The secure channel could not be set up.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The coordinator could not be reached or the connection dropped (retried).
    #[error("cannot reach the coordinator: {0}")]
    Connect(String),
    /// The TLS handshake was refused (not retried: the certificate will not change by itself).
    #[error("the TLS handshake was refused: {alert} ({detail})")]
    TlsRefused {
        /// Meaning of the TLS alert, with its number.
        alert: String,
        /// The transport's message.
        detail: String,
    },
    /// The coordinator refused this node.
    #[error("the coordinator refused this node: {0}")]
    Refused(RefusalReason),
    /// The coordinator's task manifest is not acceptable: its signature does not verify, or its
    /// plan breaks the hospital's policy (not retried: the node does not join under it).
    #[error("the task manifest is refused: {0}")]
    ManifestRefused(ManifestRefusal),
    /// The coordinator broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The egress log cannot be written: nothing is sent unrecorded.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// The node crashed on purpose (test-only fault injection).
    #[error("crashed on purpose after sending {after} in round {round}")]
    Crashed {
        /// Kind of the last message sent.
        after: &'static str,
        /// Its round.
        round: u64,
    },
    /// A `danger_*` hook is set in a build without fault injection (release builds and the
    /// demo): it would silently do nothing.
    #[error(
        "danger_crash_after or danger_stall is set, but this build has no fault injection \
         (the `fault-injection` cargo feature)"
    )]
    NoFaultInjection,
    /// The coordinator gave up its task and said why (not retried: it will not come back
    /// to this task).
    #[error("the coordinator stopped the task: {0}")]
    TaskStopped(String),
    /// The coordinator stayed unreachable.
    #[error("gave up reaching the coordinator after {after:?}: {last}")]
    GaveUp {
        /// How long the node tried.
        after: Duration,
        /// The last error.
        last: String,
    },
}

impl NodeError {
    /// Errors that retrying cannot fix.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Channel(_)
                | Self::TlsRefused { .. }
                | Self::Refused(_)
                | Self::ManifestRefused(_)
                | Self::Crashed { .. }
                | Self::NoFaultInjection
                | Self::Egress(_)
                | Self::TaskStopped(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_gives_up_after_an_unbroken_outage() {
        let limit = Duration::from_secs(300);
        let start = Instant::now();
        let mut reconnect = Reconnect::default();
        let waits: Vec<_> = (0..8)
            .map(|_| reconnect.failed(start, limit).unwrap().as_millis())
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        let later = start + Duration::from_secs(299);
        assert_eq!(reconnect.failed(later, limit), Some(MAX_BACKOFF));
        assert_eq!(
            reconnect.failed(later + Duration::from_secs(1), limit),
            None
        );
    }

    #[test]
    fn an_admission_starts_the_outage_and_the_backoff_afresh() {
        // Lost once early in a long run, then admitted again: a loss a day later is a new
        // outage with the shortest wait, not one that began a day ago.
        let limit = Duration::from_secs(300);
        let start = Instant::now();
        let mut reconnect = Reconnect::default();
        for _ in 0..6 {
            reconnect.failed(start, limit).unwrap();
        }
        reconnect.admitted();
        let a_day_later = start + Duration::from_secs(86_400);
        assert_eq!(reconnect.failed(a_day_later, limit), Some(MIN_BACKOFF));
        assert_eq!(
            reconnect.failed(a_day_later + Duration::from_secs(10), limit),
            Some(2 * MIN_BACKOFF)
        );
    }
}
