//! What crosses the wire during secure aggregation.

use serde::{Deserialize, Serialize};

use super::shamir::Share;

/// A participant's two fresh X25519 public keys for one round and its commitment to its
/// self-mask seed, bound to the round's parameters and signed with its long-term key (the key
/// of its consortium certificate), so that nobody — the coordinator included — can substitute
/// them, and so that peers given other parameters notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAdvertisement {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// The advertiser's index.
    pub index: u16,
    /// [`RoundParams::digest`](super::RoundParams::digest) of the parameters the advertiser
    /// was given; each peer compares it with the digest of its own.
    pub params_digest: [u8; 32],
    /// Public key for encrypting shares to this participant.
    pub cipher_public: [u8; 32],
    /// Public key for agreeing pairwise mask seeds.
    pub mask_public: [u8; 32],
    /// [`self_mask_commitment`](super::self_mask_commitment) of the advertiser's self-mask
    /// seed: the coordinator checks the seed it rebuilds from shares against it.
    pub self_mask_commitment: [u8; 32],
    /// Signature over [`KeyAdvertisement::signed_bytes`].
    pub signature: Vec<u8>,
}

impl KeyAdvertisement {
    /// The bytes the signature covers: a domain label, session, round, index, the parameters'
    /// digest, both keys and the self-mask commitment (every field but the signature).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"medfed-secagg-keys-v2");
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.round.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.params_digest);
        out.extend_from_slice(&self.cipher_public);
        out.extend_from_slice(&self.mask_public);
        out.extend_from_slice(&self.self_mask_commitment);
        out
    }
}

/// One entry of the key directory: an advertisement and what a peer needs to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// The signed keys.
    pub keys: KeyAdvertisement,
    /// The advertiser's certificate (DER), which carries its identity and long-term public key.
    pub certificate: Vec<u8>,
}

/// Coordinator → participants: everyone's keys (the participants of phase 1, `U1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDirectory {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// One entry per participant that advertised keys, by index.
    pub entries: Vec<DirectoryEntry>,
}

/// A share of a sender's secrets, encrypted for one receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    /// Index of the sender.
    pub from: u16,
    /// Index of the receiver.
    pub to: u16,
    /// ChaCha20-Poly1305 ciphertext of the sender's two shares for this receiver.
    pub ciphertext: Vec<u8>,
}

/// What an [`EncryptedShare`] holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SharePlaintext {
    /// Sender index, repeated inside the ciphertext.
    pub(crate) from: u16,
    /// Receiver index, repeated inside the ciphertext.
    pub(crate) to: u16,
    /// Share of the sender's mask secret key.
    pub(crate) mask_key: Share,
    /// Share of the sender's self-mask seed.
    pub(crate) self_mask: Share,
}

/// Participant → coordinator: its shares for every neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharePackage {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// One encrypted share per neighbour.
    pub shares: Vec<EncryptedShare>,
}

/// Coordinator → participant: the shares addressed to it (their senders form `U2`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareDelivery {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// The shares addressed to the receiver.
    pub shares: Vec<EncryptedShare>,
    /// Every participant whose shares were accepted (`U2`).
    pub senders: Vec<u16>,
}

/// Participant → coordinator: its input with every mask added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// The masked vector in Z(2^32). On the wire it is raw little-endian words: masked words
    /// are uniformly random, so a variable-length integer encoding would spend 5 bytes on each.
    #[serde(with = "le_words")]
    pub values: Vec<u32>,
}

/// Coordinator → each member of `U3`: who sent a masked input, for the participant to sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyRequest {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// The survivors (`U3`).
    pub survivors: Vec<u16>,
}

/// Participant → coordinator: its signature on the survivor set it was sent
/// ([`survivors_signed_bytes`](super::survivors_signed_bytes)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencySignature {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// Signature with the participant's certificate key.
    pub signature: Vec<u8>,
}

/// Coordinator → participants that signed: who sent a masked input (`U3`), with the signatures
/// of `U3`'s members on that set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// The survivors.
    pub survivors: Vec<u16>,
    /// `(signer, signature)`: the consistency signatures collected on `survivors`.
    pub signatures: Vec<(u16, Vec<u8>)>,
}

/// Participant → coordinator: for each peer, exactly one kind of share — of the self-mask seed
/// for survivors, of the mask key for dropouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// `(peer, share of its self-mask seed)` for each surviving peer.
    pub self_mask_shares: Vec<(u16, Share)>,
    /// `(peer, share of its mask secret key)` for each peer that dropped after sharing.
    pub mask_key_shares: Vec<(u16, Share)>,
}

/// Serialises `Vec<u32>` as one byte string of little-endian words.
/// One consecutive piece of a [`MaskedInput`]: words `offset..offset + values.len()` of a
/// vector of `total` words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInputChunk {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// Index of the piece's first word in the whole vector.
    pub offset: u32,
    /// Words in the whole vector.
    pub total: u32,
    /// The piece, raw little-endian words on the wire.
    #[serde(with = "le_words")]
    pub values: Vec<u32>,
}

/// Words in each [`MaskedInputChunk`] a node sends (256 KiB), the last one shorter.
pub const INPUT_CHUNK_WORDS: usize = 64 * 1024;

impl MaskedInput {
    /// The input as consecutive pieces of `words` words each (a node sends pieces of
    /// [`INPUT_CHUNK_WORDS`]), the last one shorter; one empty piece for an empty vector.
    pub fn chunks(&self, words: usize) -> impl Iterator<Item = MaskedInputChunk> + '_ {
        let words = words.max(1);
        let total = self.values.len() as u32;
        let pieces = self.values.len().div_ceil(words).max(1);
        (0..pieces).map(move |piece| {
            let start = piece * words;
            let end = (start + words).min(self.values.len());
            MaskedInputChunk {
                session: self.session,
                round: self.round,
                offset: start as u32,
                total,
                values: self.values[start..end].to_vec(),
            }
        })
    }
}

/// One consecutive piece of a masked input as the coordinator sums it: decoded
/// ([`MaskedInputChunk`]) or read in place from the bytes of its frame
/// ([`InputPieceFrame`](crate::codec::InputPieceFrame)).
pub trait InputPiece {
    /// Where the piece belongs.
    fn header(&self) -> PieceHeader;
    /// Words in the piece.
    fn word_count(&self) -> usize;
    /// Adds the piece's words into the first [`Self::word_count`] words of `sum`, wrapping in
    /// Z(2^32); a shorter `sum` takes only as many words as it has.
    fn add_to(&self, sum: &mut [u32]);
}

/// Where a piece of a masked input belongs: its round and its place in the whole vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceHeader {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// Index of the piece's first word in the whole vector.
    pub offset: u32,
    /// Words in the whole vector.
    pub total: u32,
}

impl InputPiece for MaskedInputChunk {
    fn header(&self) -> PieceHeader {
        PieceHeader {
            session: self.session,
            round: self.round,
            offset: self.offset,
            total: self.total,
        }
    }

    fn word_count(&self) -> usize {
        self.values.len()
    }

    fn add_to(&self, sum: &mut [u32]) {
        for (s, v) in sum.iter_mut().zip(&self.values) {
            *s = s.wrapping_add(*v);
        }
    }
}

/// Adds little-endian words read straight from `bytes` into `sum`, wrapping in Z(2^32) (a
/// trailing partial word is ignored; the frame's parser refuses one). The loop compiles to
/// vector loads and adds: no word is copied out first.
pub fn add_le_words(sum: &mut [u32], bytes: &[u8]) {
    for (s, w) in sum.iter_mut().zip(bytes.chunks_exact(4)) {
        *s = s.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
}

mod le_words {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        words: &[u32],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(4 * words.len());
        for w in words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        serializer.serialize_bytes(&bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u32>, D::Error> {
        serde_bytes_compat::deserialize(deserializer)
    }

    /// Little-endian words from bytes, refusing a partial word.
    fn words<E: serde::de::Error>(bytes: &[u8]) -> Result<Vec<u32>, E> {
        if !bytes.len().is_multiple_of(4) {
            return Err(E::custom(format!(
                "{} bytes is not a whole number of words",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Reads a byte string whichever way the format hands it over (bytes or a sequence).
    mod serde_bytes_compat {
        use std::fmt;

        use serde::Deserializer;
        use serde::de::{SeqAccess, Visitor};

        /// Builds the words straight from the bytes the format lends (bincode from a slice lends
        /// the frame itself), so that a 4 MB update is not first copied into a byte vector.
        struct WordsVisitor;

        impl<'de> Visitor<'de> for WordsVisitor {
            type Value = Vec<u32>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u32>, E> {
                super::words(v)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u32>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                super::words(&out)
            }
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<u32>, D::Error> {
            d.deserialize_bytes(WordsVisitor)
        }
    }
}
