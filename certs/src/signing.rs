//! Signatures with a party's consortium key, and their verification against the party's
//! consortium certificate. Secure aggregation uses them so that each node's round keys are
//! bound to its certificate: a coordinator that substitutes a key is caught by every peer.

use std::path::Path;
use std::sync::Arc;

use medfed_protocol::secagg::{PeerVerifier, SecAggError, Signer};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::client_verifier::ConsortiumClientVerifier;
use crate::{CertError, TlsFiles, files, subject_common_name};

/// Signs with the ECDSA P-256 key of this party's certificate.
pub struct CertificateSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl CertificateSigner {
    /// Loads the private key (PKCS#8 PEM, as `medfed-certs` writes it).
    pub fn load(key_path: &Path) -> Result<Self, CertError> {
        let der = files::load_key(key_path)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_der(), &rng)
            .map_err(|_| CertError::NoPrivateKey {
                path: key_path.to_owned(),
            })?;
        Ok(Self { key, rng })
    }
}

impl Signer for CertificateSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        self.key
            .sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| SecAggError::BadParams("signing failed".into()))
    }
}

/// Accepts a signature only from a certificate issued by the consortium CA (valid now, and not
/// revoked when a CRL is given) whose subject is the claimed identity.
///
/// The CRL follows the coordinator's rules ([`TlsFiles::crl`]): signed by the CA, refused past
/// its `nextUpdate` unless allowed, and reloaded when its file changes.
pub struct ConsortiumVerifier {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ConsortiumVerifier {
    /// A verifier trusting the CA certificate(s) of `files`, honouring its CRL if given (the
    /// party's own certificate and key are not used).
    pub fn new(files: &TlsFiles) -> Result<Self, CertError> {
        let verifier = ConsortiumClientVerifier::new(
            &files.ca_cert,
            files.crl_policy(),
            "secure-aggregation peer",
        )?;
        Ok(Self {
            verifier: Arc::new(verifier),
        })
    }
}

impl PeerVerifier for ConsortiumVerifier {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let cert = CertificateDer::from(certificate);
        if self
            .verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_err()
        {
            return false;
        }
        if subject_common_name(&cert).ok().as_deref() != Some(identity) {
            return false;
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else {
            return false;
        };
        let key = parsed.public_key().subject_public_key.data.to_vec();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
            .verify(message, signature)
            .is_ok()
    }
}
