//! Secure aggregation (Bonawitz et al., CCS 2017), with the sparse neighbour graph of SecAgg+
//! (Bell et al., CCS 2020) for large consortia: the coordinator learns the sum of the
//! participants' vectors and nothing else, even when some participants drop out mid-round.
//!
//! ```text
//!  participant                                coordinator
//!  ExpectDirectory::new ── KeyAdvertisement ─▶ ExpectKeys
//!  handle_directory    ◀── KeyDirectory ───── (U1: everyone who advertised)
//!                      ─── SharePackage ────▶ ExpectShares
//!  handle_delivery     ◀── ShareDelivery ──── (U2: everyone who shared)
//!                      ─── MaskedInput ─────▶ ExpectMaskedInputs
//!  handle_unmask       ◀── UnmaskRequest ──── (U3: everyone who sent an input)
//!                      ─── UnmaskResponse ──▶ ExpectUnmasking ─▶ Σ inputs of U3
//! ```
//! Each state consumes itself and returns the next, so a participant answers each phase once:
//! in particular it can never reveal both kinds of share of the same peer.
//!
//! A participant adds to its encoded input a self-mask expanded from a fresh seed `b`, and for
//! every neighbour a pairwise mask expanded from an X25519 agreement — added towards
//! higher-indexed neighbours, subtracted towards lower — so pairwise masks cancel in the sum. `b`
//! and the mask secret key are Shamir-shared among the neighbours. After the inputs, survivors'
//! self-masks are removed from the shares of `b`; the pairwise masks left by participants who
//! dropped after sharing are recomputed from the shares of their mask secret keys.

mod client;
pub mod crypto;
pub mod encoding;
pub mod fixed_point;
pub mod graph;
mod messages;
mod params;
mod server;
pub mod shamir;

pub use client::{
    ExpectDelivery, ExpectDirectory, ExpectUnmask, ParticipantState, PeerVerifier, Signer,
};
pub use messages::{
    DirectoryEntry, EncryptedShare, KeyAdvertisement, KeyDirectory, MaskedInput, ShareDelivery,
    SharePackage, UnmaskRequest, UnmaskResponse,
};
pub use params::{MAX_PAIRINGS, Participant, RoundParams};
pub use server::{ExpectKeys, ExpectMaskedInputs, ExpectShares, ExpectUnmasking};

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
