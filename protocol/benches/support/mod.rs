//! What the secure-aggregation benchmarks share: a consortium of hospitals whose long-term keys
//! sign their round keys, as in the protocol's own tests.

use std::collections::BTreeMap;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use medfed_protocol::secagg::{PeerVerifier, SecAggError, Signer};

/// Long-term Ed25519 keys of `n` hospitals; a "certificate" is the raw public key, as in the
/// protocol's own tests.
pub(crate) struct Consortium {
    keys: Vec<Ed25519KeyPair>,
    pub(crate) verifier: KeyVerifier,
}

impl Consortium {
    pub(crate) fn new(n: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut keys = Vec::with_capacity(n);
        let mut public = BTreeMap::new();
        for i in 1..=n {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any seed is a key");
            public.insert(format!("hospital-{i}"), pair.public_key().as_ref().to_vec());
            keys.push(pair);
        }
        Self {
            keys,
            verifier: KeyVerifier(public),
        }
    }

    pub(crate) fn signer(&self, index: u16) -> KeySigner<'_> {
        KeySigner(&self.keys[usize::from(index) - 1])
    }

    pub(crate) fn certificate(&self, index: u16) -> Vec<u8> {
        self.keys[usize::from(index) - 1]
            .public_key()
            .as_ref()
            .to_vec()
    }
}

/// Signs with a hospital's Ed25519 key.
pub(crate) struct KeySigner<'a>(&'a Ed25519KeyPair);

impl Signer for KeySigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(self.0.sign(message).as_ref().to_vec())
    }
}

/// Checks that the "certificate" is the identity's key and that it signed the message.
pub(crate) struct KeyVerifier(BTreeMap<String, Vec<u8>>);

impl PeerVerifier for KeyVerifier {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.0.get(identity).is_some_and(|key| key == certificate)
            && UnparsedPublicKey::new(&ED25519, certificate)
                .verify(message, signature)
                .is_ok()
    }
}
