//! Secure aggregation (Bonawitz et al., CCS 2017), with the sparse neighbour graph of SecAgg+
//! (Bell et al., CCS 2020) for large consortia: the coordinator learns the sum of the
//! participants' vectors and nothing else, even when some participants drop out mid-round, and
//! even when the coordinator itself deviates from the protocol (the "active adversary" version of
//! the protocol, §4 of the paper).
//!
//! ```text
//!  participant                                    coordinator
//!  ExpectDirectory::new ── KeyAdvertisement ────▶ ExpectKeys
//!  handle_directory    ◀── KeyDirectory ───────── (U1: everyone who advertised)
//!                      ─── SharePackage ────────▶ ExpectShares
//!  handle_delivery     ◀── ShareDelivery ──────── (U2: everyone who shared)
//!                      ─── MaskedInput ─────────▶ ExpectMaskedInputs
//!  handle_consistency  ◀── ConsistencyRequest ─── (U3: everyone who sent an input)
//!   (policy check)     ─── ConsistencySignature ▶ ExpectSignatures
//!  handle_unmask       ◀── UnmaskRequest ──────── (U3 and the signatures of U4 ⊆ U3 on it)
//!   (t signatures on   ─── UnmaskResponse ──────▶ ExpectUnmasking ─▶ Σ inputs of U3
//!    U3, policy check)                             (each rebuilt secret checked against
//!                                                   the advert's commitment / public key)
//! ```
//! Each state consumes itself and returns the next, so a participant answers each phase once:
//! in particular it signs one survivor set and can never reveal both kinds of share of the same
//! peer.
//!
//! A participant adds to its encoded input a self-mask expanded from a fresh seed `b`, and for
//! every neighbour a pairwise mask expanded from an X25519 agreement — added towards
//! higher-indexed neighbours, subtracted towards lower — so pairwise masks cancel in the sum. `b`
//! and the mask secret key are Shamir-shared among the neighbours. After the inputs, survivors'
//! self-masks are removed from the shares of `b`; the pairwise masks left by participants who
//! dropped after sharing are recomputed from the shares of their mask secret keys.
//!
//! # Against a malicious coordinator
//!
//! - **One set of parameters.** Each key advertisement is signed over the digest of the round's
//!   parameters ([`RoundParams::digest`]: participants, threshold, graph, vector length and
//!   encoding); every peer checks it against the digest of *its own* parameters, so a node given
//!   another threshold or another participant list is refused by its peers
//!   ([`SecAggError::ParamsMismatch`]).
//! - **One survivor set.** After the masked inputs, every member of `U3` signs `U3` (with the
//!   parameters' digest) with its certificate key, once. A participant reveals shares only for
//!   exactly the set it signed, and only holding at least `t` valid signatures of members of
//!   `U3` on that set. An honest participant signs one set, so two different sets can both
//!   gather `t` signatures only if `2t ≤ n + d`, with `n` participants of whom `d` sign twice
//!   (dishonest nodes): with the default threshold (more than 2/3 of `n`) that takes more than
//!   `n/3` dishonest nodes, and with none it takes `t ≤ n/2`. So the coordinator cannot tell
//!   some holders "the victim survived" and others "the victim dropped" and rebuild both of the
//!   victim's secrets. (Under SecAgg+ the threshold counts a secret's holders, not `n`; there
//!   the one-answer rule of each honest holder is what keeps the two kinds of share apart.) The
//!   node's own policy (the `check` closures of the last two steps) sees the survivors'
//!   identities before anything is signed or revealed.
//! - **Verifiable secrets.** The advert carries a commitment to the self-mask seed
//!   ([`self_mask_commitment`]); the coordinator checks each rebuilt seed against it and each
//!   rebuilt mask key against the advertised public key, so a tampered share fails the round
//!   ([`SecAggError::CommitmentMismatch`]) rather than giving a wrong sum.
//! - **Range checks** on the decoded sum ([`encoding::VectorEncoding::decode_sum`]).
//!
//! The certificates a participant checks signatures against are those the coordinator relays in
//! the key directory; [`PeerVerifier`] decides whether one is acceptable for an identity (a
//! coordinator that also runs the consortium CA can mint certificates, so the verifier must pin
//! the members' keys for this to hold against it).

mod client;
mod consistency;
pub mod crypto;
pub mod encoding;
pub mod fixed_point;
pub mod graph;
mod messages;
mod params;
pub mod quantized;
mod secure_sum;
mod server;
pub mod shamir;
#[cfg(test)]
pub(crate) mod test_keys;

pub use client::{
    ExpectConsistency, ExpectDelivery, ExpectDirectory, ExpectUnmask, ParticipantState,
    PeerVerifier, Signer, SurvivorCheck,
};
pub use consistency::survivors_signed_bytes;
pub use messages::{
    ConsistencyRequest, ConsistencySignature, DirectoryEntry, EncryptedShare, INPUT_CHUNK_WORDS,
    InputPiece, KeyAdvertisement, KeyDirectory, MaskedInput, MaskedInputChunk, PieceHeader,
    ShareDelivery, SharePackage, UnmaskRequest, UnmaskResponse, add_le_words,
};
pub use params::{MAX_PAIRINGS, Participant, RoundParams};
pub use secure_sum::{PieceVisitor, SecureSum};
pub use server::{ExpectKeys, ExpectMaskedInputs, ExpectShares, ExpectSignatures, ExpectUnmasking};

use crypto::CryptoError;

/// Why a secure-aggregation round cannot go on (it is aborted; the next round starts afresh).
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SecAggError {
    /// The round's parameters are inconsistent.
    #[error("bad secure-aggregation parameters: {0}")]
    BadParams(String),
    /// A cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Fewer participants than the threshold remain.
    #[error("only {have} participants remain in phase {phase}, the threshold is {threshold}")]
    BelowThreshold {
        /// Which phase.
        phase: &'static str,
        /// How many remain.
        have: usize,
        /// The threshold.
        threshold: usize,
    },
    /// A key advertisement whose signature does not verify against its certificate: the keys
    /// were substituted on the way.
    #[error(
        "the keys of participant {index} ({identity}) are not signed by its certificate: substituted?"
    )]
    KeySubstituted {
        /// The participant.
        index: u16,
        /// Its identity.
        identity: String,
    },
    /// A message from another session or round.
    #[error("message for session {session:016x} round {round}, expected round {expected}")]
    WrongRound {
        /// Session in the message.
        session: u64,
        /// Round in the message.
        round: u64,
        /// Round expected.
        expected: u64,
    },
    /// A message that breaks the protocol (wrong sender, duplicate, wrong length, …).
    #[error("protocol violation by participant {from}: {detail}")]
    Violation {
        /// The offending participant (0: the coordinator).
        from: u16,
        /// What was wrong.
        detail: String,
    },
    /// A share that failed authentication.
    #[error("the share from participant {from} failed authentication")]
    ShareAuthentication {
        /// Its sender.
        from: u16,
    },
    /// A figure of a count block that is not an integer count the encoding can carry.
    #[error("figure {position} is {value}, not an integer count in [-2^31, 2^31)")]
    NotACount {
        /// Its position in the vector.
        position: usize,
        /// The figure.
        value: f64,
    },
    /// A figure of a words block that is not an integer in [0, 2^32).
    #[error("figure {position} is {value}, not a word of Z(2^32) (an integer in [0, 2^32))")]
    NotAWord {
        /// Its position in the vector.
        position: usize,
        /// The figure.
        value: f64,
    },
    /// A figure of a quantised block that is NaN or infinite.
    #[error("figure {position} is not finite")]
    NotFinite {
        /// Its position in the vector.
        position: usize,
    },
    /// A quantised encoding whose lanes could carry into each other in a sum of this many
    /// inputs: it needs `participants · (2^level_bits − 1) < 2^lane_bits`, and one level bit at
    /// least.
    #[error(
        "{participants} participants do not fit {lane_bits}-bit lanes with {level_bits} level \
         bits (need participants · (2^level_bits − 1) < 2^lane_bits and at least 1 level bit): \
         widen the lanes (upload_bits) or have fewer hospitals a round"
    )]
    QuantizationCapacity {
        /// Inputs in the sum.
        participants: usize,
        /// Bits of a value's level.
        level_bits: u32,
        /// Bits of a lane.
        lane_bits: u32,
    },
    /// Too few shares to reconstruct a participant's secret.
    #[error("only {have} shares of participant {index}'s secret arrived, {threshold} needed")]
    TooFewShares {
        /// Whose secret.
        index: u16,
        /// Shares received.
        have: usize,
        /// The threshold.
        threshold: usize,
    },
    /// Keys signed for other round parameters: the coordinator gave this participant and that
    /// one different parameters (another threshold, participant list, graph or encoding).
    #[error(
        "participant {index} ({identity}) signed its keys for other round parameters: the coordinator sent different parameters to different participants"
    )]
    ParamsMismatch {
        /// The participant.
        index: u16,
        /// Its identity.
        identity: String,
    },
    /// A rebuilt secret that does not match what its owner committed to in its signed advert:
    /// a share was tampered with. The round fails rather than give a wrong sum.
    #[error(
        "the shares of participant {index}'s {secret} rebuild a value that does not match its signed advert: a share was tampered with"
    )]
    CommitmentMismatch {
        /// Whose secret.
        index: u16,
        /// Which secret.
        secret: SecretKind,
    },
    /// An unmask request whose survivor set is not the one this participant signed.
    #[error("the unmask request's survivors are not the set this participant signed")]
    SurvivorsChanged,
    /// A signature on the survivor set that does not verify against its signer's certificate.
    #[error("participant {index}'s signature on the survivor set does not verify")]
    BadConsistencySignature {
        /// The claimed signer.
        index: u16,
    },
    /// Fewer valid signatures on the survivor set than the threshold.
    #[error("only {have} signatures on the survivor set, the threshold is {threshold}")]
    TooFewSignatures {
        /// Valid signatures from distinct survivors.
        have: usize,
        /// The threshold.
        threshold: usize,
    },
    /// The node's own policy refused to sign or unmask for this survivor set.
    #[error("refused by this node's policy: {detail}")]
    RefusedByPolicy {
        /// What the policy objected to.
        detail: String,
    },
    /// A word of the unmasked sum larger than the inputs summed can give: an input was out of
    /// range for its encoding (or the number of inputs is wrong).
    #[error(
        "word {position} of the sum is {value}, more than the {most} that {summed_inputs} inputs can give"
    )]
    LimbOutOfRange {
        /// Position of the word in the encoded vector.
        position: usize,
        /// The word (for a clipped fixed-point word, its magnitude as a signed value).
        value: u64,
        /// The largest value in range.
        most: u64,
        /// Inputs in the sum.
        summed_inputs: usize,
    },
}

/// Which of a participant's two shared secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretKind {
    /// The seed of its self-mask (rebuilt for survivors).
    SelfMaskSeed,
    /// Its mask secret key (rebuilt for participants that dropped after sharing).
    MaskKey,
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SelfMaskSeed => "self-mask seed",
            Self::MaskKey => "mask key",
        })
    }
}

/// The commitment to participant `index`'s self-mask seed carried in its signed advert:
/// SHA-256 over a domain label, the session, the round, the index and the seed. The seed is 32
/// fresh random bytes, so the commitment hides it; SHA-256's collision resistance binds it.
pub fn self_mask_commitment(session: u64, round: u64, index: u16, seed: &[u8; 32]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"medfed-secagg-self-mask-commitment-v1");
    context.update(&session.to_be_bytes());
    context.update(&round.to_be_bytes());
    context.update(&index.to_be_bytes());
    context.update(seed);
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// HKDF info of the pairwise mask seed of participants `a` and `b`: bound to the session, the
/// round and the (unordered) pair, so both derive the same seed from their X25519 agreement.
pub fn pair_info(session: u64, round: u64, a: u16, b: u16) -> Vec<u8> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    context(b"medfed-secagg-mask-v1", session, round, lo, hi)
}

/// HKDF info and AEAD associated data of a share sent from `from` to `to` (ordered: the two
/// directions of a pair get different keys).
fn share_context(session: u64, round: u64, from: u16, to: u16) -> Vec<u8> {
    context(b"medfed-secagg-share-v1", session, round, from, to)
}

/// A domain label followed by the session, the round and two participant indices.
fn context(domain: &[u8], session: u64, round: u64, first: u16, second: u16) -> Vec<u8> {
    let mut info = domain.to_vec();
    info.extend_from_slice(&session.to_be_bytes());
    info.extend_from_slice(&round.to_be_bytes());
    info.extend_from_slice(&first.to_be_bytes());
    info.extend_from_slice(&second.to_be_bytes());
    info
}

#[cfg(test)]
mod tests;
