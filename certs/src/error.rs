//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while making, reading or using consortium PKI material.
///
/// Variants name the file or peer involved, so that a message printed by the CLI (or logged by the
/// coordinator or a node) says what to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file could not be written (or renamed into place, or synced).
    #[error("cannot write {}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A directory could not be created.
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file this operation would create is already there; nothing was overwritten.
    #[error("{} already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file could not be parsed.
    #[error("{} is not valid PEM: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A PEM file holds no `CERTIFICATE` block.
    #[error("{} holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no private key.
    #[error("{} holds no private key", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A private key file could not be used (unknown algorithm, bad encoding).
    #[error("{} holds an unusable private key: {reason}", path.display())]
    InvalidPrivateKey {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A private key file that group or others may read or write: it is not used.
    #[error(
        "{} has mode {mode:04o}: a private key must be readable and writable by its owner only; \
         run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PEM file holds no `X509 CRL` block.
    #[error("{} holds no certificate revocation list", path.display())]
    NoCrl {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in a file could not be parsed or used.
    #[error("{} holds an invalid certificate: {reason}", path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// DER bytes given directly (say, a peer's certificate) are not a certificate.
    #[error("malformed certificate: {reason}")]
    MalformedCertificate {
        /// What was wrong.
        reason: String,
    },
    /// A certificate's subject has no common name, so it names no consortium member.
    #[error("certificate subject has no common name")]
    NoCommonName,
    /// A certificate's subject has more than one common name, so its identity is ambiguous.
    #[error("certificate subject has more than one common name")]
    AmbiguousCommonName,
    /// A certificate's subject common name is not a UTF-8 (or ASCII) string.
    #[error("certificate subject common name is not a UTF-8 string")]
    CommonNameNotUtf8,
    /// A certificate signing request could not be parsed, or its signature does not verify.
    #[error("{} is not a valid certificate signing request", path.display())]
    InvalidCsr {
        /// The file.
        path: PathBuf,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// A node, coordinator or CA name is unusable.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The same node name was given twice.
    #[error("node name {name:?} given more than once")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A development consortium needs at least one node.
    #[error("a development consortium needs at least one node")]
    NoNodes,
    /// The number of `--names` differs from `--nodes`.
    #[error("--nodes is {nodes} but --names lists {names} names")]
    NodeCountMismatch {
        /// The number of nodes asked for.
        nodes: usize,
        /// The number of names given.
        names: usize,
    },
    /// A subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: not an IP address or DNS name")]
    InvalidSan {
        /// The name as given.
        san: String,
    },
    /// Subject alternative names were given for a node certificate; only the coordinator has them.
    #[error("subject alternative names are only for coordinator certificates")]
    SanForNode,
    /// A validity period that ends before it starts.
    #[error(
        "validity period is empty: not_before {not_before} is not before not_after {not_after}"
    )]
    InvalidValidity {
        /// Start of the period.
        not_before: time::OffsetDateTime,
        /// End of the period.
        not_after: time::OffsetDateTime,
    },
    /// The CA private key does not belong to the CA certificate.
    #[error("CA key {} does not match CA certificate {}", key.display(), cert.display())]
    CaKeyMismatch {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
    },
    /// A certificate was not issued by this consortium's CA.
    #[error("{} was not issued by the consortium CA", path.display())]
    NotIssuedByConsortium {
        /// The certificate file.
        path: PathBuf,
    },
    /// The certificate to revoke is the CA certificate itself.
    #[error("{} is the CA certificate itself; it cannot be revoked by its own CRL", path.display())]
    RevokeCa {
        /// The certificate file.
        path: PathBuf,
    },
    /// The certificate is already on the CRL.
    #[error("{} (serial {serial}) is already revoked", path.display())]
    AlreadyRevoked {
        /// The certificate file.
        path: PathBuf,
        /// Its serial number, hex.
        serial: String,
    },
    /// The CRL file is unusable (unparseable, not signed by the CA, no CRL number).
    #[error("invalid CRL {}: {reason}", path.display())]
    InvalidCrl {
        /// The CRL file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The CRL is past its `nextUpdate`: the operator should have issued a newer one.
    #[error(
        "CRL {} expired at {next_update} (its nextUpdate); the operator reissues it with \
         `medfed-certs crl --ca-dir DIR` (or any revocation), or set allow_expired_crl = true \
         in [tls] to accept it anyway",
        path.display()
    )]
    ExpiredCrl {
        /// The CRL file.
        path: PathBuf,
        /// When the next CRL was due.
        next_update: time::OffsetDateTime,
    },
    /// rcgen failed to generate a key or to sign a certificate or CRL.
    #[error("cannot {what}")]
    Generate {
        /// What was being made.
        what: &'static str,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// rustls refused a trust anchor (CA certificate).
    #[error("CA certificate in {} is not a usable trust anchor", path.display())]
    TrustAnchor {
        /// The CA certificate file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// rustls refused the certificate verifier settings (for example a bad CRL).
    #[error("cannot build certificate verifier")]
    Verifier {
        /// What rustls said.
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused our own identity (certificate chain and key).
    #[error("cannot use certificate {} with key {}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// rustls refused the protocol settings.
    #[error("cannot configure TLS")]
    Tls {
        /// What rustls said.
        source: rustls::Error,
    },
}
