//! The consistency round (Bonawitz et al. 2017, §4): every survivor signs the survivor set, and a
//! participant reveals shares only for the set it signed, holding at least `t` signatures of
//! survivors on that same set.

use std::collections::{BTreeMap, BTreeSet};

use super::SecAggError;
use super::client::PeerVerifier;
use super::params::RoundParams;

/// The bytes a participant signs in the consistency round: a domain label, the digest of the
/// round's parameters ([`RoundParams::digest`], which binds session and round), the number of
/// survivors and their indices in ascending order (big-endian `u16`s).
pub fn survivors_signed_bytes(params_digest: &[u8; 32], survivors: &BTreeSet<u16>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 2 * survivors.len());
    out.extend_from_slice(b"medfed-secagg-survivors-v1");
    out.extend_from_slice(params_digest);
    out.extend_from_slice(&(survivors.len() as u64).to_be_bytes());
    for index in survivors {
        out.extend_from_slice(&index.to_be_bytes());
    }
    out
}

/// A survivor list as a set; an index listed twice is the coordinator's protocol violation.
pub(crate) fn survivor_set(list: &[u16]) -> Result<BTreeSet<u16>, SecAggError> {
    let set: BTreeSet<u16> = list.iter().copied().collect();
    if set.len() != list.len() {
        return Err(SecAggError::Violation {
            from: 0,
            detail: "survivor listed twice".into(),
        });
    }
    Ok(set)
}

/// Checks the consistency signatures on `survivors`: each from a distinct survivor, each
/// verifying against that survivor's certificate from the key directory, and at least the
/// threshold of them. Any bad entry fails the whole check (a coordinator that relays a forged
/// signature is not trusted with the rest).
pub(crate) fn check_signatures(
    params: &RoundParams,
    survivors: &BTreeSet<u16>,
    signatures: &[(u16, Vec<u8>)],
    certificates: &BTreeMap<u16, Vec<u8>>,
    verifier: &dyn PeerVerifier,
) -> Result<(), SecAggError> {
    // Structure first (cheap), so that a flood of entries costs no signature verifications.
    let mut signers = BTreeSet::new();
    for (index, _) in signatures {
        if !survivors.contains(index) {
            return Err(violation(&format!(
                "a signature of participant {index}, which is not a survivor"
            )));
        }
        if !signers.insert(*index) {
            return Err(violation(&format!("two signatures of participant {index}")));
        }
    }
    if signers.len() < params.threshold {
        return Err(SecAggError::TooFewSignatures {
            have: signers.len(),
            threshold: params.threshold,
        });
    }
    let message = survivors_signed_bytes(&params.digest(), survivors);
    for (index, signature) in signatures {
        let (Some(identity), Some(certificate)) =
            (params.identity(*index), certificates.get(index))
        else {
            return Err(violation(&format!(
                "survivor {index} is not in the key directory"
            )));
        };
        if !verifier.verify(identity, certificate, &message, signature) {
            return Err(SecAggError::BadConsistencySignature { index: *index });
        }
    }
    Ok(())
}

fn violation(detail: &str) -> SecAggError {
    SecAggError::Violation {
        from: 0,
        detail: detail.to_owned(),
    }
}
