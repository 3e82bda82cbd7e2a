//! Shared fixtures: consortia on disk, and an in-memory TLS handshake.

use std::path::Path;
use std::sync::Arc;

use medfed_certs::{Role, TlsFiles, Validity};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use time::{Duration, OffsetDateTime};

/// The ALPN the tests speak.
pub(crate) const ALPN: &[u8] = b"medfed/1";

/// A development consortium with nodes `names` in a fresh temporary directory.
pub(crate) fn dev(names: &[&str]) -> (tempfile::TempDir, medfed_certs::DevConsortium) {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let consortium = medfed_certs::make_dev_consortium(dir.path(), &names).unwrap();
    (dir, consortium)
}

/// Enrols `name` with the CA in `ca_dir` the way a hospital and operator would (request, then
/// sign), writing into `out_dir`; returns its TLS files, CRL from `ca_dir`.
pub(crate) fn enrol(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    role: Role,
    validity: Validity,
) -> TlsFiles {
    let csr = medfed_certs::make_request(out_dir, name).unwrap();
    let cert = out_dir.join(format!("{name}.pem"));
    medfed_certs::sign_request(ca_dir, &csr, &cert, role, validity, &[]).unwrap();
    TlsFiles {
        ca_cert: ca_dir.join(medfed_certs::CA_CERT_FILE),
        cert,
        key: out_dir.join(format!("{name}.key")),
        crl: Some(ca_dir.join(medfed_certs::CRL_FILE)),
        allow_expired_crl: false,
    }
}

/// A validity period from `from_days` to `to_days` days from now (negative: in the past).
pub(crate) fn days(from_days: i64, to_days: i64) -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now + Duration::days(from_days),
        not_after: now + Duration::days(to_days),
    }
}

/// How an in-memory handshake ended.
pub(crate) struct Outcome {
    /// The first error the client saw, if any.
    pub(crate) client: Option<rustls::Error>,
    /// The first error the server saw, if any.
    pub(crate) server: Option<rustls::Error>,
    /// The server's side, to ask about the peer.
    pub(crate) server_conn: ServerConnection,
    /// The client's side.
    pub(crate) client_conn: ClientConnection,
}

impl Outcome {
    /// Both sides finished the handshake without error.
    pub(crate) fn succeeded(&self) -> bool {
        self.client.is_none()
            && self.server.is_none()
            && !self.client_conn.is_handshaking()
            && !self.server_conn.is_handshaking()
    }

    /// The client's subject common name as the server sees it.
    pub(crate) fn peer_name(&self) -> String {
        let certs = self.server_conn.peer_certificates().unwrap();
        medfed_certs::subject_common_name(&certs[0]).unwrap()
    }
}

/// Runs a TLS handshake between a client (connecting to `localhost`) and a server, pumping bytes
/// between them in memory until both are done, one fails and the other has heard about it, or
/// nothing moves.
pub(crate) fn handshake(client: ClientConfig, server: ServerConfig) -> Outcome {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client_conn = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut server_conn = ServerConnection::new(Arc::new(server)).unwrap();
    let (mut client_err, mut server_err) = (None, None);
    for _ in 0..32 {
        let mut moved = 0;
        let mut buf = Vec::new();
        while client_conn.wants_write() {
            moved += client_conn.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() && server_err.is_none() {
            server_conn.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = server_conn.process_new_packets() {
                server_err = Some(e);
            }
        }
        let mut buf = Vec::new();
        while server_conn.wants_write() {
            moved += server_conn.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() && client_err.is_none() {
            client_conn.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = client_conn.process_new_packets() {
                client_err = Some(e);
            }
        }
        if moved == 0 {
            break;
        }
    }
    Outcome {
        client: client_err,
        server: server_err,
        server_conn,
        client_conn,
    }
}

/// Handshake of `client` files against `server` files, both with ALPN [`ALPN`].
pub(crate) fn connect(client: &TlsFiles, server: &TlsFiles) -> Outcome {
    handshake(
        medfed_certs::client_config(client, &[ALPN]).unwrap(),
        medfed_certs::server_config(server, &[ALPN]).unwrap(),
    )
}
