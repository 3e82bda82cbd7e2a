//! The operator's dashboard: a read-only web page of the run (task, round and phase, every
//! node by certificate name, the pooled AUC and loss over rounds, the fairness verdicts, round
//! durations, bytes in), updated live over server-sent events, and Prometheus `/metrics`, on one
//! TCP listener (`[dashboard]`, off by default).
//!
//! It serves only the [`Console`]'s summary: what the coordinator already knows, never a
//! hospital's figure that secure aggregation hides. On a loopback address it is plain HTTP; on
//! any other the configuration requires TLS (the coordinator's own certificate) and a token.
//! Every file it serves is compiled into the binary, so no page needs the internet.

mod routes;
pub mod token;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use medfed_certs::{CertError, TlsFiles, web_server_config};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span};

use crate::config::DashboardConfig;
use crate::console::Console;
pub use token::{AccessToken, TokenError};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Connections served at once from one IP address: one client cannot take every slot.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// Event streams open at once (each holds a connection for as long as it is open).
const MAX_EVENT_STREAMS: usize = 16;
/// How long a client has for its TLS handshake and for each request's headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The address cannot be bound.
    #[error("dashboard.listen {addr}: cannot listen: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The token file cannot be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The coordinator's certificate or key cannot serve HTTPS.
    #[error("dashboard.tls: {0}")]
    Tls(#[from] CertError),
}

/// What every request handler shares.
struct Shared {
    console: Arc<Console>,
    token: Option<AccessToken>,
    tls: bool,
    reports_dir: PathBuf,
    /// Slots of the event streams open at once.
    event_streams: Arc<Semaphore>,
}

/// Binds the dashboard and serves it in the background for as long as the async runtime runs
/// (after training too, so that the final summary stays readable until the process exits);
/// returns the address it listens on (useful with port 0).
pub async fn start(
    config: &DashboardConfig,
    tls_files: &TlsFiles,
    console: Arc<Console>,
    reports_dir: PathBuf,
) -> Result<SocketAddr, DashboardError> {
    let token = config
        .token_file
        .as_deref()
        .map(AccessToken::read)
        .transpose()?;
    let acceptor = if config.tls {
        let server = web_server_config(tls_files, &[b"http/1.1"])?;
        Some(TlsAcceptor::from(Arc::new(server)))
    } else {
        None
    };
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| DashboardError::Bind {
                addr: config.listen,
                source,
            })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| DashboardError::Bind {
            addr: config.listen,
            source,
        })?;
    let scheme = if config.tls { "https" } else { "http" };
    info!(
        url = %format_args!("{scheme}://{local_addr}/"),
        token = token.is_some(),
        "dashboard listening"
    );
    let shared = Arc::new(Shared {
        console,
        token,
        tls: config.tls,
        reports_dir,
        event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
    });
    tokio::spawn(accept_loop(listener, acceptor, shared));
    Ok(local_addr)
}

async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "dashboard: accept failed");
                // Out of file descriptors, say: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Local clients (a browser opens several connections per page) are not limited.
        let address_slot = if remote.ip().is_loopback() {
            None
        } else if let Some(slot) = AddressSlot::take(&per_address, remote.ip()) {
            Some(slot)
        } else {
            debug!(%remote, "dashboard: too many connections from this address");
            continue;
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(
            async move {
                let _slots = (slot, address_slot);
                match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => serve_connection(stream, shared).await,
                            Ok(Err(e)) => debug!(error = %e, "dashboard: TLS handshake failed"),
                            Err(_) => debug!("dashboard: TLS handshake timed out"),
                        }
                    }
                    None => serve_connection(stream, shared).await,
                }
            }
            .instrument(info_span!("dashboard", %remote)),
        );
    }
}

/// One of an IP address's connection slots, given back when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    /// A slot for `address`, unless it holds [`MAX_CONNECTIONS_PER_ADDRESS`] already.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, address: IpAddr) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(address).or_default();
        if *count >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| routes::handle(shared.clone(), request));
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        debug!(error = %e, "dashboard: connection ended with an error");
    }
}
