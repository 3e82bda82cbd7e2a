//! The rustls configurations for mutual TLS, built in one place for the coordinator and the nodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::client_verifier::{ConsortiumClientVerifier, RefusedCertificateHook};
use crate::revocation::{self, CrlPolicy};
use crate::{CA_CERT_FILE, CRL_FILE, CertError, files};

/// Paths to one party's TLS material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The consortium CA certificate(s), PEM: the only trust anchors.
    pub ca_cert: PathBuf,
    /// This party's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// This party's private key, PEM.
    pub key: PathBuf,
    /// The consortium CRL, PEM. When set, the file must exist, and the peer's (end-entity)
    /// certificate is refused if revoked. The CRL must be signed by the consortium CA and not be
    /// past its `nextUpdate` (unless [`TlsFiles::allow_expired_crl`]). The coordinator picks up
    /// a changed file at its next handshake, without a restart.
    pub crl: Option<PathBuf>,
    /// Accept a CRL past its `nextUpdate` (`allow_expired_crl = true` in `[tls]`). Off by
    /// default: an expired CRL may be missing revocations, so it is refused, at start-up and at
    /// every handshake.
    pub allow_expired_crl: bool,
}

impl TlsFiles {
    /// The files of party `name` in a directory laid out by `dev` (or by hand the same way):
    /// `ca.pem`, `NAME.pem`, `NAME.key` and `crl.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca_cert: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            crl: Some(dir.join(CRL_FILE)),
            allow_expired_crl: false,
        }
    }

    /// The CRL to honour and how, if any.
    pub(crate) fn crl_policy(&self) -> Option<CrlPolicy> {
        self.crl.as_ref().map(|path| CrlPolicy {
            path: path.clone(),
            allow_expired: self.allow_expired_crl,
        })
    }
}

/// Server (coordinator) config: TLS 1.3 only, ring provider, client certificate required and
/// verified against the consortium CA and the CRL, if given, for the client's own certificate
/// (reloaded when the file changes; see [`TlsFiles::crl`]). Every refused client certificate is
/// logged with its subject and the reason. `alpn` lists the protocols offered, in order of
/// preference; a client that offers ALPN but none of these is refused with a
/// `no_application_protocol` alert.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, CertError> {
    server_config_with_hook(files, alpn, None)
}

/// [`server_config`], telling `on_refused` of every client certificate refused (with the
/// subject it claims and the reason), besides logging it.
pub fn server_config_with_hook(
    files: &TlsFiles,
    alpn: &[&[u8]],
    on_refused: Option<RefusedCertificateHook>,
) -> Result<ServerConfig, CertError> {
    let verifier = ConsortiumClientVerifier::new(&files.ca_cert, files.crl_policy(), "node")?
        .with_hook(on_refused);
    let (chain, key) = load_identity(files)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| CertError::Tls { source })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(|source| identity_error(files, source))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption: a resumed TLS 1.3 handshake restores the client's certificate
    // without asking the verifier again, so a certificate revoked (or expired) since the
    // session began would still get in. Every connection runs the full check, CRL included.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Server config for the coordinator's web dashboard: TLS 1.3 only, ring provider, the
/// coordinator's own certificate (browsers and scrapers trust it through the consortium CA), no
/// client certificate asked for (the dashboard checks a token instead). `alpn` lists the
/// protocols offered.
pub fn web_server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, CertError> {
    let (chain, key) = load_identity(files)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| CertError::Tls { source })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| identity_error(files, source))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Client (node) config: TLS 1.3 only, ring provider, verifies the coordinator against the
/// consortium CA (and the CRL, if given, for the coordinator's own certificate; checked as
/// [`TlsFiles::crl`] says, read once), presents the node's certificate. `alpn` lists the
/// protocols offered.
pub fn client_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ClientConfig, CertError> {
    let provider = provider();
    let roots = load_roots(&files.ca_cert)?;
    let mut verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
    if let Some(policy) = files.crl_policy() {
        let ca = files::load_certs(&files.ca_cert)?;
        let crl = revocation::load(&policy, &ca, OffsetDateTime::now_utc())?;
        verifier = verifier
            .with_crls(crl.ders)
            .only_check_end_entity_revocation();
        if !policy.allow_expired {
            verifier = verifier.enforce_revocation_expiration();
        }
    }
    let verifier = verifier
        .build()
        .map_err(|source| CertError::Verifier { source })?;
    let (chain, key) = load_identity(files)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| CertError::Tls { source })?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|source| identity_error(files, source))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The ring provider with its defaults (TLS13_AES_128_GCM_SHA256 included, as QUIC requires).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `path` as a trust anchor.
pub(crate) fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in files::load_certs(path)? {
        roots.add(cert).map_err(|source| CertError::TrustAnchor {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn load_identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    Ok((
        files::load_certs(&files.cert)?,
        files::load_key(&files.key)?,
    ))
}

fn identity_error(files: &TlsFiles, source: rustls::Error) -> CertError {
    CertError::Identity {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    }
}
