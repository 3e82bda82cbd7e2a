//! Consortium PKI for medfed, and the one place that builds the rustls configurations the
//! coordinator and the nodes use for mutual TLS.
//!
//! ```text
//!   operator                               hospital
//!   init_ca ──▶ ca.pem, ca.key, crl.pem
//!                                          make_request ──▶ NODE.key (stays), NODE.csr.pem
//!   sign_request(NODE.csr.pem) ──▶ NODE.pem ─────────────▶ NODE.pem
//!   revoke(NODE.pem) ──▶ crl.pem (next CRL number)
//!
//!   coordinator: server_config(ca.pem, coordinator.pem/.key, crl.pem)   ◀── mutual TLS 1.3 ──▶
//!   node:        client_config(ca.pem, NODE.pem/.key, crl.pem)
//! ```
//! A node's identity is its certificate's subject common name ([`subject_common_name`]). Node
//! certificates carry the `clientAuth` extended key usage and the coordinator's `serverAuth`, so
//! neither can stand in for the other. [`make_dev_consortium`] does all of it in one directory for
//! local runs and tests.
//!
//! It also loads the coordinator's report key ([`coordinator_report_key`]) with which auditors
//! check its signed reports and task manifests, and the consortium's member list.
//!
//! What this crate does *not* do: no networking (the QUIC endpoints and framed streams built on
//! these configurations are `medfed-transport`, so an auditor's tools can check certificates
//! without a network stack), no protocol logic (that is `medfed-protocol`), no online revocation (OCSP) or CRL
//! distribution (the operator copies `crl.pem` to the coordinator, which picks it up at its next
//! handshake; connections already open are not closed), no key escrow (a node's private
//! key is generated where it is used and never read by the CA), and no locking of the CA directory
//! against two operators signing or revoking at the same moment.
//!
//! All TLS configurations use the `ring` provider and TLS 1.3 only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ca;
mod client_verifier;
mod crl;
mod dev;
mod error;
mod files;
mod members;
mod names;
mod report_keys;
mod request;
mod revocation;
mod show;
mod signing;
mod tls;

pub use ca::{KeyKind, Role, Validity, init_ca, sign_request, subject_common_name};
pub use client_verifier::RefusedCertificateHook;
pub use crl::{CRL_LIFETIME, reissue_crl, revoke};
pub use dev::{
    COORDINATOR_NAME, DEV_CA_DAYS, DEV_CA_NAME, DEV_CERT_DAYS, DevConsortium, Party,
    dev_node_names, make_dev_consortium,
};
pub use error::CertError;
pub use files::{
    BoundedFileError, PrivateFileError, read_owner_only, read_regular_file, replace_file,
    replace_file_with,
};
pub use members::{MemberList, MemberListError, MembershipError, key_fingerprint};
pub use report_keys::{
    coordinator_report_key, coordinator_report_key_der, load_report_signing_key,
};
pub use request::{make_request, make_request_with};
pub use show::{CertSummary, describe_certificate};
pub use signing::{CertificateSigner, ConsortiumVerifier};
pub use tls::{TlsFiles, client_config, server_config, server_config_with_hook, web_server_config};

/// The CA certificate's file name in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name in a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The CRL's file name in a CA directory.
pub const CRL_FILE: &str = "crl.pem";
/// The member list's file name in a development consortium.
pub const MEMBERS_FILE: &str = "members.toml";
