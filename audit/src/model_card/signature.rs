//! The card's detached signature: `model_card.json.sig`, the coordinator's Ed25519 signature
//! (the key that signs the audit reports) over the card file's exact bytes, so that an auditor
//! can check offline that the card's own text (intended use, limitations, …), which no report
//! carries, is the coordinator's.
//!
//! The signed message is [`SIGNATURE_DOMAIN`] followed by the card file's bytes: the prefix keeps
//! a card signature from ever verifying as the signature of a report or a manifest (whose signed
//! bytes open with their own `format`).

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::CardError;
use medfed_protocol::report::file_sha256;

/// File name of the signature beside the card.
pub const MODEL_CARD_SIGNATURE: &str = "model_card.json.sig";

/// The `format` of a signature file.
pub const SIGNATURE_FORMAT: &str = "medfed-model-card-signature/1";

/// Prefixed to the card's bytes before signing.
pub const SIGNATURE_DOMAIN: &[u8] = b"medfed-model-card-signature/1\n";

/// The content of `model_card.json.sig`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardSignature {
    /// Always [`SIGNATURE_FORMAT`].
    pub format: String,
    /// SHA-256 of the card file's bytes (lower-case hex), for people; the signature covers the
    /// bytes themselves.
    pub card_sha256: String,
    /// Lower-case hex Ed25519 signature over [`SIGNATURE_DOMAIN`] and the card's bytes.
    pub signature: String,
    /// Lower-case hex raw Ed25519 public key of the signer.
    pub signer_public_key: String,
}

impl CardSignature {
    /// Signs the card file's `bytes` with `key`.
    pub fn sign(bytes: &[u8], key: &Ed25519KeyPair) -> Self {
        Self {
            format: SIGNATURE_FORMAT.to_owned(),
            card_sha256: file_sha256(bytes),
            signature: hex::encode(key.sign(&message(bytes)).as_ref()),
            signer_public_key: hex::encode(key.public_key().as_ref()),
        }
    }

    /// The signature file's bytes: pretty JSON and one `\n`.
    pub fn to_json_pretty(&self) -> Result<Vec<u8>, CardError> {
        super::pretty_json(self)
    }

    /// Reads a signature file.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CardError> {
        let signature: Self = serde_json::from_slice(bytes).map_err(|e| CardError::Malformed {
            detail: format!("signature file: {e}"),
        })?;
        if signature.format != SIGNATURE_FORMAT {
            return Err(CardError::Format {
                found: signature.format,
            });
        }
        Ok(signature)
    }

    /// Checks that this signs the card file's `bytes` with the key `expected_public_key`.
    pub fn verify(&self, bytes: &[u8], expected_public_key: &[u8; 32]) -> Result<(), CardError> {
        if self.signer_public_key != hex::encode(expected_public_key) {
            return Err(CardError::WrongSigner {
                found: self.signer_public_key.clone(),
            });
        }
        let signature = hex::decode(&self.signature).map_err(|_| CardError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, expected_public_key)
            .verify(&message(bytes), &signature)
            .map_err(|_| CardError::BadSignature)
    }
}

/// [`SIGNATURE_DOMAIN`] followed by `bytes`.
fn message(bytes: &[u8]) -> Vec<u8> {
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(bytes);
    message
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn public(key: &Ed25519KeyPair) -> [u8; 32] {
        key.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn a_signed_card_verifies_and_any_edit_or_other_key_is_refused() {
        let key = key();
        let card = b"{\n  \"format\": \"medfed-model-card/1\"\n}\n";
        let signature = CardSignature::sign(card, &key);
        let reread = CardSignature::from_json(&signature.to_json_pretty().unwrap()).unwrap();
        assert_eq!(reread, signature);
        assert_eq!(reread.verify(card, &public(&key)), Ok(()));
        assert_eq!(reread.card_sha256, file_sha256(card));

        let mut edited = card.to_vec();
        edited[5] ^= 1;
        assert_eq!(
            reread.verify(&edited, &public(&key)),
            Err(CardError::BadSignature)
        );
        assert!(matches!(
            reread.verify(card, &public(&self::key())),
            Err(CardError::WrongSigner { .. })
        ));
        // The signature is over the domain-prefixed bytes, not the bare card.
        let bare = hex::decode(&signature.signature).unwrap();
        assert!(
            UnparsedPublicKey::new(&ED25519, public(&key))
                .verify(card, &bare)
                .is_err()
        );
    }
}
