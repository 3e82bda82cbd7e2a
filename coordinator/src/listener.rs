//! Accepting node connections on QUIC or TCP: the TLS handshake (with the consortium's client
//! verifier), then the node's `Hello`, then admission into the [`Registry`].

use std::sync::Arc;
use std::time::Duration;

use medfed_protocol::manifest::SignedManifest;
use medfed_protocol::messages::{
    Hello, Message, PROTOCOL_VERSION, RefusalReason, Refused, Welcome,
};
use medfed_transport::{
    ChannelError, Connection, ConnectionError, Incoming, Listener, MessageReader, SendStream,
    peer_identity, send_message,
};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::console::{Console, variant_label};
use crate::registry::{NodeHandle, Registry};

/// How long a node has to say `Hello` after its handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame accepted before admission: a `Hello` is tiny.
const HELLO_MAX_FRAME: usize = 64 * 1024;
/// Application close code of a connection whose first stream did not carry a decodable `Hello`;
/// the close reason says what was wrong with it.
pub const BAD_HELLO: u32 = 1;
/// Application close code of a connection refused after its `Hello` (the `Refused` message on
/// the stream says why).
pub const REFUSED: u32 = 2;

/// What admission checks a node against and tells it.
#[derive(Debug, Clone)]
pub struct Admission {
    /// This coordinator run.
    pub session: u64,
    /// Digest of the consortium schema.
    pub schema_digest: [u8; 32],
    /// The task's signed manifest, sent in every `Welcome`.
    pub manifest: SignedManifest,
}

/// Called for every admitted node (to record it in the coordinator's state).
pub type OnAdmit = Arc<dyn Fn(&str) + Send + Sync>;

/// Accepts connections until `shutdown` turns true.
///
/// Every connection refused is logged with the subject of its certificate and the reason: at
/// the handshake by the TLS verifier (which sees the certificate, trusted or not), after it
/// here. The `console` hears of every admission, disconnection and refusal.
pub async fn serve(
    endpoint: Arc<Listener>,
    admission: Arc<Admission>,
    registry: Arc<Registry>,
    on_admit: OnAdmit,
    console: Arc<Console>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        let transport = incoming.transport();
        let (admission, registry, on_admit, console) = (
            admission.clone(),
            registry.clone(),
            on_admit.clone(),
            console.clone(),
        );
        tokio::spawn(
            async move {
                let admitted =
                    handle_connection(incoming, &admission, &registry, &on_admit, &console);
                match admitted.await {
                    Ok(()) => {}
                    Err((None, reason)) => {
                        warn!(%reason, "node not admitted (the certificate refused is logged above)");
                        console.refused(None, &reason.kind(), &reason.to_string());
                    }
                    Err((Some(subject), reason)) => {
                        warn!(%subject, %reason, "node not admitted");
                        console.refused(Some(&subject), &reason.kind(), &reason.to_string());
                    }
                }
            }
            .instrument(info_span!("connection", %remote, %transport)),
        );
    }
}

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
enum NotAdmitted {
    /// The TLS handshake failed (the certificate verifier logged the certificate's subject).
    #[error("handshake failed: {0}")]
    Handshake(ConnectionError),
    /// The certificate names no usable identity.
    #[error("no usable identity in the certificate: {0}")]
    Identity(ChannelError),
    /// The node said nothing in time.
    #[error("no hello within the timeout")]
    HelloTimeout,
    /// The connection ended before `Hello`.
    #[error("connection lost before hello: {0}")]
    LostBeforeHello(ConnectionError),
    /// The first stream did not carry a decodable message.
    #[error("bad hello: {0}")]
    BadHello(ChannelError),
    /// The node was told it is refused, and why.
    #[error("refused: {0}")]
    Refused(RefusalReason),
    /// `Welcome` could not be sent.
    #[error("cannot send welcome: {0}")]
    Welcome(ChannelError),
}

impl NotAdmitted {
    /// The kind of reason, as the summary and the metrics' labels name it; a refusal told to
    /// the node is labelled by its [`RefusalReason`].
    fn kind(&self) -> String {
        match self {
            Self::Handshake(_) => "handshake".into(),
            Self::Identity(_) => "identity".into(),
            Self::HelloTimeout => "hello_timeout".into(),
            Self::LostBeforeHello(_) => "lost_before_hello".into(),
            Self::BadHello(_) => "bad_hello".into(),
            Self::Refused(reason) => variant_label(reason),
            Self::Welcome(_) => "welcome".into(),
        }
    }
}

/// A refused connection: the subject of its certificate, when the handshake got that far.
type Refusal = (Option<String>, NotAdmitted);

async fn handle_connection(
    incoming: Incoming,
    admission: &Admission,
    registry: &Registry,
    on_admit: &OnAdmit,
    console: &Console,
) -> Result<(), Refusal> {
    // The TLS handshake: certificates not issued by the consortium CA, revoked, expired or not
    // yet valid fail here, with the TLS alert naming the reason.
    let connection = incoming
        .accept()
        .await
        .map_err(|e| (None, NotAdmitted::Handshake(e)))?;
    let (identity, certificate) =
        peer_identity(&connection).map_err(|e| (None, NotAdmitted::Identity(e)))?;
    let span = info_span!("node", node = %identity);
    let subject = identity.clone();
    async {
        let (mut send, recv) = tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi())
            .await
            .map_err(|_| NotAdmitted::HelloTimeout)?
            .map_err(NotAdmitted::LostBeforeHello)?;
        let mut reader = MessageReader::new(recv, HELLO_MAX_FRAME);
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.expect()).await {
            Ok(Ok(Message::Hello(hello))) => hello,
            Ok(Ok(other)) => {
                let reason = RefusalReason::UnexpectedMessage {
                    got: other.kind().into(),
                    expected: "hello".into(),
                };
                return Err(refuse(&connection, &mut send, admission, reason).await);
            }
            Ok(Err(e)) => {
                // The close reason names the fault (a frame over the cap, a truncated frame, bytes
                // that decode to no message), so the peer and its operator can tell which.
                let reason = NotAdmitted::BadHello(e);
                connection.close(BAD_HELLO, reason.to_string().as_bytes());
                return Err(reason);
            }
            Err(_) => return Err(NotAdmitted::HelloTimeout),
        };
        if let Some(reason) = check_hello(&hello, admission) {
            return Err(refuse(&connection, &mut send, admission, reason).await);
        }
        let welcome = Welcome {
            session: admission.session,
            identity: identity.clone(),
            manifest: admission.manifest.clone(),
        };
        send_message(&mut send, &Message::Welcome(welcome))
            .await
            .map_err(NotAdmitted::Welcome)?;
        send.finish().await;
        let received = registry.received_counter(&identity);
        received.fetch_add(
            reader.bytes_received(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if registry.get(&identity).is_some() {
            // A restarted node must not wait for its old connection to time out, so the newer
            // connection wins; two live processes under one certificate show up here.
            warn!(subject = %identity, "a second connection under this identity replaces the one connected");
        }
        registry.admit(Arc::new(NodeHandle::new(
            identity.clone(),
            connection.clone(),
            certificate.to_vec(),
            hello.model_hash,
            hello.partial_model,
            received,
        )));
        on_admit(&identity);
        console.admitted(&identity, connection.kind());
        info!("admitted");
        let reason = connection.closed().await;
        registry.remove(&identity, &connection);
        // A newer connection under the same name replaced this one: it is not disconnected.
        if registry.get(&identity).is_none() {
            console.disconnected(&identity, &reason.to_string());
        }
        info!(%reason, "disconnected");
        Ok(())
    }
    .instrument(span)
    .await
    .map_err(|reason| (Some(subject), reason))
}

/// Why a `Hello` is not acceptable, if it is not.
fn check_hello(hello: &Hello, admission: &Admission) -> Option<RefusalReason> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Some(RefusalReason::ProtocolVersion {
            theirs: hello.protocol_version,
            ours: PROTOCOL_VERSION,
        });
    }
    if hello.schema_digest != admission.schema_digest {
        return Some(RefusalReason::SchemaMismatch {
            theirs: hex::encode(hello.schema_digest),
            ours: hex::encode(admission.schema_digest),
        });
    }
    None
}

/// Tells the node why it is refused and closes the connection; returns the refusal for the log.
async fn refuse(
    connection: &Connection,
    send: &mut SendStream,
    admission: &Admission,
    reason: RefusalReason,
) -> NotAdmitted {
    let refused = Message::Refused(Refused {
        session: admission.session,
        round: 0,
        reason: reason.clone(),
    });
    if send_message(send, &refused).await.is_ok() {
        send.finish().await;
        // Give the refusal a moment to reach the node before the connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
    connection.close(REFUSED, b"refused");
    NotAdmitted::Refused(reason)
}
