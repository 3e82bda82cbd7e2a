//! Test stand-ins for a certificate's key: real Ed25519 signatures, with the public key carried
//! as the "certificate" and pinned per identity, as a certificate's subject would be.

use std::collections::BTreeMap;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::{PeerVerifier, SecAggError, Signer};

/// Signs with a real Ed25519 key.
pub(crate) struct TestSigner(pub(crate) Ed25519KeyPair);

impl TestSigner {
    /// A key from a 32-byte seed.
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        Self(Ed25519KeyPair::from_seed_unchecked(seed).expect("an Ed25519 seed is 32 bytes"))
    }

    /// The public key: the test's "certificate".
    pub(crate) fn certificate(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }
}

impl Signer for TestSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(self.0.sign(message).as_ref().to_vec())
    }
}

/// Verifies against the public key carried as the "certificate", and checks it is the one
/// pinned for the identity.
pub(crate) struct TestVerifier(pub(crate) BTreeMap<String, Vec<u8>>);

impl PeerVerifier for TestVerifier {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.0.get(identity).is_some_and(|key| key == certificate)
            && UnparsedPublicKey::new(&ED25519, certificate)
                .verify(message, signature)
                .is_ok()
    }
}
