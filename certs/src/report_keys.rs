//! The keys of the coordinator's signed audit reports: the coordinator signs with the Ed25519
//! key of its consortium certificate, and an auditor checks the signatures against that
//! certificate, itself checked against the consortium CA.

use std::path::Path;

use ring::signature::Ed25519KeyPair;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{CertError, files};

/// Object identifier of Ed25519 keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// Loads the coordinator's Ed25519 private key (PKCS#8 PEM) to sign audit reports.
pub fn load_report_signing_key(key_path: &Path) -> Result<Ed25519KeyPair, CertError> {
    let der = files::load_key(key_path)?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_der()).map_err(|e| {
        CertError::InvalidCertificate {
            path: key_path.to_owned(),
            reason: format!("not an Ed25519 private key: {e}"),
        }
    })
}

/// The Ed25519 public key of the coordinator certificate `cert_path`, after checking that the
/// consortium CA in `ca_cert_path` issued it and that it is valid now.
pub fn coordinator_report_key(
    cert_path: &Path,
    ca_cert_path: &Path,
) -> Result<[u8; 32], CertError> {
    let der = files::load_cert(cert_path)?;
    coordinator_report_key_der(&der, cert_path, ca_cert_path)
}

/// As [`coordinator_report_key`], for a certificate given as DER bytes — the one the
/// coordinator presented on a connection, say; `source` names it in errors.
pub fn coordinator_report_key_der(
    der: &[u8],
    source: &Path,
    ca_cert_path: &Path,
) -> Result<[u8; 32], CertError> {
    let cert_path = source;
    let ca_der = files::load_cert(ca_cert_path)?;
    let invalid = |path: &Path, reason: String| CertError::InvalidCertificate {
        path: path.to_owned(),
        reason,
    };
    let (_, ca) =
        X509Certificate::from_der(&ca_der).map_err(|e| invalid(ca_cert_path, e.to_string()))?;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| invalid(cert_path, e.to_string()))?;
    let issued = cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok();
    if !issued {
        return Err(CertError::NotIssuedByConsortium {
            path: cert_path.to_owned(),
        });
    }
    if !cert.validity().is_valid() {
        return Err(invalid(
            cert_path,
            "the certificate is expired or not yet valid".into(),
        ));
    }
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(invalid(
            cert_path,
            "the certificate's key is not Ed25519, so it cannot sign reports".into(),
        ));
    }
    spki.subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| invalid(cert_path, "malformed Ed25519 public key".into()))
}

#[cfg(test)]
mod tests {
    use ring::signature::{ED25519, KeyPair, UnparsedPublicKey};

    use super::*;
    use crate::make_dev_consortium;

    #[test]
    fn the_dev_coordinator_signs_with_ed25519_and_its_key_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let consortium = make_dev_consortium(dir.path(), &["hospital-1".into()]).unwrap();
        let key = load_report_signing_key(&consortium.coordinator.key).unwrap();
        let public =
            coordinator_report_key(&consortium.coordinator.cert, &consortium.ca_cert).unwrap();
        assert_eq!(key.public_key().as_ref(), public);
        // The same key from the certificate's DER, as a node gets it from the connection.
        let der = files::load_cert(&consortium.coordinator.cert).unwrap();
        let from_der =
            coordinator_report_key_der(&der, Path::new("peer"), &consortium.ca_cert).unwrap();
        assert_eq!(from_der, public);
        let signature = key.sign(b"report");
        assert!(
            UnparsedPublicKey::new(&ED25519, public)
                .verify(b"report", signature.as_ref())
                .is_ok()
        );
        // A node's certificate is not Ed25519: it cannot stand in for the coordinator's.
        let node = consortium.node("hospital-1").unwrap();
        assert!(coordinator_report_key(&node.cert, &consortium.ca_cert).is_err());
        // Nor is a certificate from another CA accepted.
        let other = make_dev_consortium(&dir.path().join("other"), &["h".into()]).unwrap();
        let foreign = files::load_cert(&other.coordinator.cert).unwrap();
        assert!(matches!(
            coordinator_report_key_der(&foreign, Path::new("peer"), &consortium.ca_cert),
            Err(CertError::NotIssuedByConsortium { .. })
        ));
        assert!(matches!(
            coordinator_report_key(&other.coordinator.cert, &consortium.ca_cert),
            Err(CertError::NotIssuedByConsortium { .. })
        ));
    }
}
