//! Streams multiplexed over one TLS connection with yamux, plus what QUIC has and yamux lacks:
//! a close that tells the peer an application code and a reason.
//!
//! Each side's first stream is its control stream: it opens it before any other, writes one
//! marker byte, then a keep-alive item every few seconds and, when it closes the connection,
//! the close record (code, then the reason's length and bytes). The first stream the peer
//! opens is therefore its control stream; the driver reads it itself and never hands it to the
//! application. A peer whose control stream stays silent for the idle timeout is lost: the
//! keep-alives cross every hop (a proxy's too), which TCP's own do not.
//!
//! One task (the driver) owns the yamux connection and polls it, which moves every stream's
//! bytes; handles talk to it over channels.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncRead as _, AsyncWrite as _};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::connection::ConnectionError;

/// The byte a control stream starts with (and the version of this scheme).
const CONTROL_MARKER: u8 = 0x4d;
/// A control item: "still here" (no content).
const ITEM_KEEPALIVE: u8 = 0x01;
/// A control item: the close record, then the code (u32), the reason's length (u16) and the
/// reason, all big-endian.
const ITEM_CLOSE: u8 = 0x02;
/// How often each side says it is still here on its control stream. TCP's own keep-alives
/// only reach the next hop, which behind a proxy is the proxy.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// How long a silent peer (nothing on its control stream) is waited for before the connection
/// is taken as lost, as QUIC's idle timeout.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest close reason sent or accepted, in bytes.
const MAX_REASON: usize = 512;
/// Most streams open at once on a connection, either way (as QUIC's limit).
const MAX_STREAMS: usize = 64;
/// Inbound streams waiting for the application to accept them.
const INBOUND_BACKLOG: usize = 16;
/// How long the side that closes waits for the peer to read its close record and end the
/// connection in turn, before it ends it anyway.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long ending the connection (yamux's close: queued frames out, then the socket's) may
/// take before the socket is dropped as it is.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A multiplexed connection. Cloning gives another handle; the connection closes (code 0) when
/// the last handle is dropped.
#[derive(Clone)]
pub struct TcpConnection {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    inbound: Mutex<mpsc::Receiver<yamux::Stream>>,
    state: watch::Sender<Option<ConnectionError>>,
    remote: SocketAddr,
    certificates: Vec<CertificateDer<'static>>,
    id: usize,
    /// Closed (its sender dropped) when the driver has stopped: the socket is gone.
    driver_done: watch::Receiver<()>,
}

impl std::fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConnection")
            .field("remote", &self.shared.remote)
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, ConnectionError>>),
    Close { code: u32, reason: Vec<u8> },
}

/// Which end of the connection this is (yamux numbers streams by it).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    Client,
    Server,
}

impl TcpConnection {
    /// Starts multiplexing over `io`, an established TLS stream whose peer presented
    /// `certificates`.
    pub(crate) fn start<T>(
        io: T,
        side: Side,
        remote: SocketAddr,
        certificates: Vec<CertificateDer<'static>>,
    ) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut config = yamux::Config::default();
        // In this order: yamux asserts the window covers 256 KiB per stream at every step.
        config.set_max_num_streams(MAX_STREAMS);
        config.set_max_connection_receive_window(Some(MAX_STREAMS * 1024 * 1024));
        let mode = match side {
            Side::Client => yamux::Mode::Client,
            Side::Server => yamux::Mode::Server,
        };
        let connection = yamux::Connection::new(io.compat(), config, mode);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_BACKLOG);
        let (state, _) = watch::channel(None);
        let (done, driver_done) = watch::channel(());
        let shared = Arc::new(Shared {
            commands,
            inbound: Mutex::new(inbound),
            state,
            remote,
            certificates,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            driver_done,
        });
        let mut driver = Driver {
            connection,
            commands: command_rx,
            opens: VecDeque::new(),
            inbound: inbound_tx,
            state: shared.state.clone(),
            ours: None,
            theirs: None,
            closing: None,
            unsent_record: None,
            handles_gone: false,
            _done: done,
            keepalive: {
                let mut every = tokio::time::interval_at(
                    tokio::time::Instant::now() + KEEPALIVE_EVERY,
                    KEEPALIVE_EVERY,
                );
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every
            },
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
        };
        tokio::spawn(std::future::poll_fn(move |cx| driver.poll(cx)));
        Self { shared }
    }

    /// Opens a stream.
    pub(crate) async fn open_bi(&self) -> Result<Compat<yamux::Stream>, ConnectionError> {
        let (reply, answer) = oneshot::channel();
        if self.shared.commands.send(Command::Open(reply)).is_err() {
            return Err(self.ended());
        }
        match answer.await {
            Ok(Ok(stream)) => Ok(stream.compat()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.ended()),
        }
    }

    /// Waits for the peer to open a stream.
    pub(crate) async fn accept_bi(&self) -> Result<Compat<yamux::Stream>, ConnectionError> {
        let mut inbound = self.shared.inbound.lock().await;
        tokio::select! {
            stream = inbound.recv() => match stream {
                Some(stream) => Ok(stream.compat()),
                None => Err(self.ended()),
            },
            reason = self.closed() => Err(reason),
        }
    }

    /// Closes the connection with `code` and `reason`.
    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        let reason = reason[..reason.len().min(MAX_REASON)].to_vec();
        self.shared.state.send_if_modified(|state| {
            let first = state.is_none();
            if first {
                *state = Some(ConnectionError::LocallyClosed);
            }
            first
        });
        let _ = self.shared.commands.send(Command::Close { code, reason });
    }

    /// Waits until the connection is closed; says why.
    pub(crate) async fn closed(&self) -> ConnectionError {
        let mut state = self.shared.state.subscribe();
        match state.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(ConnectionError::LocallyClosed),
            Err(_) => self.ended(),
        }
    }

    /// Why the connection is closed, if it is.
    pub(crate) fn close_reason(&self) -> Option<ConnectionError> {
        self.shared.state.borrow().clone()
    }

    /// The reason a connection that ended gives.
    fn ended(&self) -> ConnectionError {
        self.close_reason()
            .unwrap_or_else(|| ConnectionError::Lost("the connection's driver stopped".into()))
    }

    /// This connection's number in the process.
    pub(crate) fn stable_id(&self) -> usize {
        self.shared.id
    }

    /// The peer's address.
    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.shared.remote
    }

    /// The peer's certificate chain, leaf first.
    pub(crate) fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.shared.certificates
    }

    /// A handle that says when this connection's socket is gone.
    pub(crate) fn driver_done(&self) -> watch::Receiver<()> {
        self.shared.driver_done.clone()
    }

    /// A handle that does not keep the connection open.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.shared)
    }
}

/// Closes the connection behind `weak` (from [`TcpConnection::downgrade`]) if it is still there.
pub(crate) fn close_weak(weak: &std::sync::Weak<Shared>, code: u32, reason: &[u8]) {
    if let Some(shared) = weak.upgrade() {
        TcpConnection { shared }.close(code, reason);
    }
}

/// Bytes still to write on our control stream.
struct Outgoing {
    stream: yamux::Stream,
    pending: Vec<u8>,
    written: usize,
    /// The close record was queued: end the stream once it is written.
    last: bool,
    done: bool,
}

/// The peer's control stream, as far as it has been read.
struct Incoming {
    stream: yamux::Stream,
    /// Bytes read and not yet parsed.
    read: Vec<u8>,
    ended: bool,
    marker_seen: bool,
    /// Its close record was read.
    closed: bool,
}

/// A close under way: what ends it.
struct Closing {
    /// This side closed first, and waits (up to the linger) for the peer to end the
    /// connection, so that nothing the peer sent is left unread when the socket closes (Linux
    /// would answer unread data with a reset, and the close record could be lost with it).
    ours: bool,
    linger: Pin<Box<tokio::time::Sleep>>,
    /// Set once yamux's close has begun; the deadline for it.
    ending: Option<Pin<Box<tokio::time::Sleep>>>,
}

struct Driver<T> {
    connection: yamux::Connection<T>,
    commands: mpsc::UnboundedReceiver<Command>,
    opens: VecDeque<oneshot::Sender<Result<yamux::Stream, ConnectionError>>>,
    inbound: mpsc::Sender<yamux::Stream>,
    state: watch::Sender<Option<ConnectionError>>,
    ours: Option<Outgoing>,
    theirs: Option<Incoming>,
    closing: Option<Closing>,
    /// A close record queued before our control stream was open.
    unsent_record: Option<Vec<u8>>,
    /// Every handle was dropped (the command channel is closed: stop polling it).
    handles_gone: bool,
    /// Dropped with the driver: tells [`TcpConnection::driver_done`] it has stopped.
    _done: watch::Sender<()>,
    /// When to say "still here" next.
    keepalive: tokio::time::Interval,
    /// Fires when the peer has been silent for [`IDLE_TIMEOUT`].
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        // A driver that stops without saying why (its task aborted, the runtime shut down)
        // must not leave `closed()` waiting for ever.
        self.state.send_if_modified(|state| {
            let first = state.is_none();
            if first {
                *state = Some(ConnectionError::Lost(
                    "the connection's driver stopped".into(),
                ));
            }
            first
        });
    }
}

impl<T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin> Driver<T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut progress = false;
            while !self.handles_gone {
                let Poll::Ready(command) = self.commands.poll_recv(cx) else {
                    break;
                };
                progress = true;
                match command {
                    Some(Command::Open(reply)) => self.opens.push_back(reply),
                    Some(Command::Close { code, reason }) => self.begin_close(code, &reason),
                    // Every handle is gone: nobody will use the connection again.
                    None => {
                        self.handles_gone = true;
                        self.set_state(ConnectionError::LocallyClosed);
                        self.begin_close(0, b"");
                    }
                }
            }
            if self.closing.is_some() {
                for reply in self.opens.drain(..) {
                    let _ = reply.send(Err(ConnectionError::LocallyClosed));
                }
            }
            // Our control stream is the first stream we open.
            if self.ours.is_none() || !self.opens.is_empty() {
                match self.connection.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        progress = true;
                        match (&self.ours, self.opens.pop_front()) {
                            (None, reply) => {
                                let mut pending = vec![CONTROL_MARKER];
                                let record = self.unsent_record.take();
                                let last = record.is_some();
                                pending.extend(record.unwrap_or_default());
                                self.ours = Some(Outgoing {
                                    stream,
                                    pending,
                                    written: 0,
                                    last,
                                    done: false,
                                });
                                if let Some(reply) = reply {
                                    self.opens.push_front(reply);
                                }
                            }
                            (Some(_), Some(reply)) => {
                                let _ = reply.send(Ok(stream));
                            }
                            (Some(_), None) => {}
                        }
                    }
                    Poll::Ready(Err(e)) => return self.end(Some(e), cx),
                    Poll::Pending => {}
                }
            }
            if self.closing.is_none() {
                if self.keepalive.poll_tick(cx).is_ready()
                    && let Some(ours) = &mut self.ours
                {
                    ours.pending.push(ITEM_KEEPALIVE);
                    progress = true;
                }
                if self.idle.as_mut().poll(cx).is_ready() {
                    self.set_state(ConnectionError::TimedOut);
                    self.begin_close(0, b"");
                    progress = true;
                }
            }
            progress |= self.write_control(cx);
            match self.connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    progress = true;
                    if self.theirs.is_none() {
                        self.theirs = Some(Incoming {
                            stream,
                            read: Vec::new(),
                            ended: false,
                            marker_seen: false,
                            closed: false,
                        });
                    } else if self.closing.is_none() {
                        // A peer opening more streams than are accepted loses the extra ones.
                        let _ = self.inbound.try_send(stream);
                    }
                }
                Poll::Ready(Some(Err(e))) => return self.end(Some(e), cx),
                Poll::Ready(None) => return self.end(None, cx),
                Poll::Pending => {}
            }
            match self.read_control(cx) {
                Ok(read) => progress |= read,
                Err(violation) => {
                    self.set_state(ConnectionError::Lost(violation));
                    self.begin_close(0, b"");
                }
            }
            if let Some(closing) = &mut self.closing {
                let record_sent = self.ours.as_ref().is_none_or(|o| o.done);
                // The side that closed first waits for the peer's end; the other ends at once.
                let ready = record_sent && !closing.ours;
                if closing.ending.is_none()
                    && (ready || closing.linger.as_mut().poll(cx).is_ready())
                {
                    closing.ending = Some(Box::pin(tokio::time::sleep(CLOSE_DEADLINE)));
                }
                if let Some(deadline) = &mut closing.ending {
                    let timed_out = deadline.as_mut().poll(cx).is_ready();
                    return match self.connection.poll_close(cx) {
                        Poll::Ready(_) => self.end(None, cx),
                        Poll::Pending if timed_out => self.end(None, cx),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Starts closing: queues the close record on our control stream (or for it, if it is not
    /// open yet).
    fn begin_close(&mut self, code: u32, reason: &[u8]) {
        if self.closing.is_some() {
            return;
        }
        let reason = &reason[..reason.len().min(MAX_REASON)];
        let mut record = vec![ITEM_CLOSE];
        record.extend_from_slice(&code.to_be_bytes());
        // MAX_REASON fits in a u16.
        record.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        record.extend_from_slice(reason);
        match &mut self.ours {
            Some(ours) => {
                ours.pending.extend_from_slice(&record);
                ours.last = true;
            }
            None => self.unsent_record = Some(record),
        }
        self.closing = Some(Closing {
            ours: true,
            linger: Box::pin(tokio::time::sleep(CLOSE_LINGER)),
            ending: None,
        });
    }

    /// The peer closed: end our side without waiting (the peer waits for it).
    fn close_after_peer(&mut self) {
        if let Some(ours) = &mut self.ours {
            ours.last = true;
        }
        match &mut self.closing {
            Some(closing) => closing.ours = false,
            None => {
                self.closing = Some(Closing {
                    ours: false,
                    linger: Box::pin(tokio::time::sleep(CLOSE_LINGER)),
                    ending: None,
                });
            }
        }
    }

    /// Writes what is pending on our control stream; whether anything moved.
    fn write_control(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(ours) = &mut self.ours else {
            return false;
        };
        let mut progress = false;
        while ours.written < ours.pending.len() {
            match Pin::new(&mut ours.stream).poll_write(cx, &ours.pending[ours.written..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    ours.written += n;
                    progress = true;
                }
                Poll::Ready(_) => {
                    // The stream is gone: the close record cannot be sent.
                    ours.written = ours.pending.len();
                    ours.done = true;
                    return progress;
                }
                Poll::Pending => return progress,
            }
        }
        if ours.last && !ours.done {
            match Pin::new(&mut ours.stream).poll_close(cx) {
                Poll::Ready(_) => {
                    ours.done = true;
                    progress = true;
                }
                Poll::Pending => {}
            }
        }
        progress
    }

    /// Reads the peer's control stream; whether anything moved, or why the stream is bad.
    fn read_control(&mut self, cx: &mut Context<'_>) -> Result<bool, String> {
        let Some(theirs) = &mut self.theirs else {
            return Ok(false);
        };
        let mut progress = false;
        let mut buffer = [0u8; 64];
        while !theirs.ended {
            match Pin::new(&mut theirs.stream).poll_read(cx, &mut buffer) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => theirs.ended = true,
                Poll::Ready(Ok(n)) => {
                    self.idle
                        .as_mut()
                        .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                    if !theirs.closed {
                        theirs.read.extend_from_slice(&buffer[..n]);
                    }
                    if theirs.read.len() > 1 + 7 + MAX_REASON {
                        return Err("the peer's control stream is too long".into());
                    }
                }
                Poll::Pending => break,
            }
            progress = true;
        }
        let Some(close) = parse_control(theirs)? else {
            return Ok(progress);
        };
        self.set_state(close);
        self.close_after_peer();
        Ok(progress)
    }

    /// Records why the connection ended, unless a reason is already recorded.
    fn set_state(&self, reason: ConnectionError) {
        self.state.send_if_modified(|state| {
            let first = state.is_none();
            if first {
                *state = Some(reason);
            }
            first
        });
    }

    /// The connection is over: records why (the peer's close record, read to the end first,
    /// wins over what the connection's end looked like) and fails every waiting open.
    fn end(&mut self, error: Option<yamux::ConnectionError>, cx: &mut Context<'_>) -> Poll<()> {
        let _ = self.read_control(cx);
        let reason = match error {
            Some(yamux::ConnectionError::Io(e)) => crate::tcp::io_error(&e),
            Some(e) => ConnectionError::Lost(e.to_string()),
            None => ConnectionError::Lost("the peer ended the connection".into()),
        };
        self.set_state(reason.clone());
        for reply in self.opens.drain(..) {
            let _ = reply.send(Err(reason.clone()));
        }
        Poll::Ready(())
    }
}

/// Parses what has been read of the peer's control stream, consuming keep-alives; the peer's
/// close, once its whole record is in.
fn parse_control(theirs: &mut Incoming) -> Result<Option<ConnectionError>, String> {
    if theirs.closed {
        return Ok(None);
    }
    if !theirs.marker_seen {
        match theirs.read.first() {
            None => return Ok(None),
            Some(&CONTROL_MARKER) => {
                theirs.read.remove(0);
                theirs.marker_seen = true;
            }
            Some(_) => {
                return Err("the peer's control stream does not start with the marker".into());
            }
        }
    }
    let keepalives = theirs
        .read
        .iter()
        .take_while(|&&b| b == ITEM_KEEPALIVE)
        .count();
    theirs.read.drain(..keepalives);
    let read = &theirs.read;
    match read.first() {
        None => Ok(None),
        Some(&ITEM_CLOSE) if read.len() >= 7 => {
            let code = u32::from_be_bytes([read[1], read[2], read[3], read[4]]);
            let length = usize::from(u16::from_be_bytes([read[5], read[6]]));
            if length > MAX_REASON {
                return Err(format!("the peer's close reason is {length} bytes long"));
            }
            if read.len() < 7 + length {
                return Ok(None);
            }
            let reason = String::from_utf8_lossy(&read[7..7 + length]).into_owned();
            theirs.closed = true;
            theirs.read.clear();
            Ok(Some(ConnectionError::ApplicationClosed {
                code: code.into(),
                reason,
            }))
        }
        Some(&ITEM_CLOSE) => Ok(None),
        Some(other) => Err(format!(
            "unknown item {other:#04x} on the peer's control stream"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<ConnectionError>, String> {
        // Any stream will do: parsing only looks at the bytes read.
        let (client, _server) = tokio::io::duplex(64);
        let mut connection = yamux::Connection::new(
            client.compat(),
            yamux::Config::default(),
            yamux::Mode::Client,
        );
        let stream = std::future::poll_fn(|cx| connection.poll_new_outbound(cx));
        let stream = block_on(stream).expect("a stream");
        let mut theirs = Incoming {
            stream,
            read: bytes.to_vec(),
            ended: false,
            marker_seen: false,
            closed: false,
        };
        parse_control(&mut theirs)
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn keepalives_are_skipped_and_a_whole_close_record_is_read() {
        let mut record = vec![CONTROL_MARKER, ITEM_KEEPALIVE, ITEM_KEEPALIVE, ITEM_CLOSE];
        record.extend_from_slice(&4u32.to_be_bytes());
        record.extend_from_slice(&3u16.to_be_bytes());
        record.extend_from_slice(b"bye");
        assert_eq!(
            parse(&record),
            Ok(Some(ConnectionError::ApplicationClosed {
                code: 4,
                reason: "bye".into()
            }))
        );
        // Cut anywhere before its end, the record is not read yet.
        for end in 0..record.len() {
            assert_eq!(parse(&record[..end]), Ok(None), "{end} bytes");
        }
    }

    #[test]
    fn a_control_stream_that_breaks_the_rules_is_refused() {
        assert!(parse(&[0x00]).is_err(), "no marker");
        assert!(parse(&[CONTROL_MARKER, 0x7f]).is_err(), "unknown item");
        let mut long = vec![CONTROL_MARKER, ITEM_CLOSE, 0, 0, 0, 0];
        long.extend_from_slice(&(MAX_REASON as u16 + 1).to_be_bytes());
        assert!(parse(&long).is_err(), "reason too long");
    }
}
