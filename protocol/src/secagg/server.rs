//! The coordinator's side: one state per phase. Each collects answers with `handle_*` until the
//! driver decides the phase is over (everyone answered, or the deadline passed), then `finish`
//! consumes it and returns the next state and what to send:
//! [`ExpectKeys`] → [`ExpectShares`] → [`ExpectMaskedInputs`] → [`ExpectSignatures`] →
//! [`ExpectUnmasking`] → the sum.

use std::collections::{BTreeMap, BTreeSet};

use super::client::PeerVerifier;
use super::consistency::survivors_signed_bytes;
use super::crypto::{AgreementKeyPair, add_mask, subtract_mask};
use super::messages::{
    ConsistencyRequest, ConsistencySignature, DirectoryEntry, EncryptedShare, InputPiece,
    KeyAdvertisement, KeyDirectory, MaskedInput, ShareDelivery, SharePackage, UnmaskRequest,
    UnmaskResponse,
};
use super::params::RoundParams;
use super::shamir::{self, Share};
use super::{SecAggError, SecretKind, pair_info, self_mask_commitment};

/// Phase 1: collecting key advertisements.
#[derive(Debug)]
pub struct ExpectKeys {
    params: RoundParams,
    /// [`RoundParams::digest`] of `params`, which every advert must carry.
    params_digest: [u8; 32],
    graph: Vec<Vec<u16>>,
    keys: BTreeMap<u16, DirectoryEntry>,
}

/// Phase 2: collecting share packages.
#[derive(Debug)]
pub struct ExpectShares {
    params: RoundParams,
    graph: Vec<Vec<u16>>,
    /// `U1`, with their keys.
    keys: BTreeMap<u16, DirectoryEntry>,
    packages: BTreeMap<u16, Vec<EncryptedShare>>,
}

/// Phase 3: collecting masked inputs, summing them as they come.
#[derive(Debug)]
pub struct ExpectMaskedInputs {
    params: RoundParams,
    graph: Vec<Vec<u16>>,
    keys: BTreeMap<u16, DirectoryEntry>,
    /// `U2`.
    sharers: BTreeSet<u16>,
    /// `U3` so far.
    survivors: BTreeSet<u16>,
    sum: Vec<u32>,
    /// Participants whose input is partly summed, piece by piece, with the words summed so far.
    partial: BTreeMap<u16, usize>,
}

/// Phase 4: collecting the survivors' signatures on the survivor set.
#[derive(Debug)]
pub struct ExpectSignatures {
    params: RoundParams,
    graph: Vec<Vec<u16>>,
    keys: BTreeMap<u16, DirectoryEntry>,
    sharers: BTreeSet<u16>,
    /// `U3`.
    survivors: BTreeSet<u16>,
    sum: Vec<u32>,
    /// The bytes each survivor signs.
    signed_bytes: Vec<u8>,
    /// `U4` so far, with their signatures.
    signatures: BTreeMap<u16, Vec<u8>>,
}

/// Phase 5: collecting unmasking shares.
#[derive(Debug)]
pub struct ExpectUnmasking {
    params: RoundParams,
    graph: Vec<Vec<u16>>,
    keys: BTreeMap<u16, DirectoryEntry>,
    sharers: BTreeSet<u16>,
    survivors: BTreeSet<u16>,
    sum: Vec<u32>,
    /// Who signed the survivor set (`U4`), and so is asked to unmask.
    signers: BTreeSet<u16>,
    /// Who answered (`U5`).
    responders: BTreeSet<u16>,
    self_mask_shares: BTreeMap<u16, Vec<Share>>,
    mask_key_shares: BTreeMap<u16, Vec<Share>>,
}

impl ExpectKeys {
    /// Starts a round.
    pub fn new(params: RoundParams) -> Result<Self, SecAggError> {
        params.validate()?;
        let graph = params.graph()?;
        Ok(Self {
            params_digest: params.digest(),
            params,
            graph,
            keys: BTreeMap::new(),
        })
    }

    /// The round's parameters.
    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    /// Takes participant `from`'s keys, with the certificate it presented on its connection.
    /// Keys made for other round parameters are refused ([`SecAggError::ParamsMismatch`]).
    pub fn handle_keys(
        &mut self,
        from: u16,
        keys: KeyAdvertisement,
        certificate: Vec<u8>,
    ) -> Result<(), SecAggError> {
        check(&self.params, from, keys.session, keys.round)?;
        if keys.index != from {
            return Err(violation(
                from,
                "advertised keys under another participant's index",
            ));
        }
        if keys.params_digest != self.params_digest {
            return Err(SecAggError::ParamsMismatch {
                index: from,
                identity: self.params.identity(from).unwrap_or_default().to_owned(),
            });
        }
        if self.keys.contains_key(&from) {
            return Err(violation(from, "advertised keys twice"));
        }
        self.keys.insert(from, DirectoryEntry { keys, certificate });
        Ok(())
    }

    /// Ends phase 1: the directory of `U1` to send to each of them.
    pub fn finish(self) -> Result<(ExpectShares, KeyDirectory), SecAggError> {
        at_least(&self.params, "advertise keys", self.keys.len())?;
        let directory = KeyDirectory {
            session: self.params.session,
            round: self.params.round,
            entries: self.keys.values().cloned().collect(),
        };
        let next = ExpectShares {
            params: self.params,
            graph: self.graph,
            keys: self.keys,
            packages: BTreeMap::new(),
        };
        Ok((next, directory))
    }
}

impl ExpectShares {
    /// Participants of `U1`, who are asked for shares.
    pub fn participants(&self) -> Vec<u16> {
        self.keys.keys().copied().collect()
    }

    /// Takes participant `from`'s encrypted shares.
    pub fn handle_package(&mut self, from: u16, package: SharePackage) -> Result<(), SecAggError> {
        check(&self.params, from, package.session, package.round)?;
        if !self.keys.contains_key(&from) {
            return Err(violation(
                from,
                "sent shares without having advertised keys",
            ));
        }
        if self.packages.contains_key(&from) {
            return Err(violation(from, "sent shares twice"));
        }
        let neighbours = &self.graph[usize::from(from) - 1];
        let mut receivers = BTreeSet::new();
        for share in &package.shares {
            if share.from != from
                || !neighbours.contains(&share.to)
                || !self.keys.contains_key(&share.to)
            {
                return Err(violation(
                    from,
                    &format!("share addressed from {} to {}", share.from, share.to),
                ));
            }
            if !receivers.insert(share.to) {
                return Err(violation(from, &format!("two shares for {}", share.to)));
            }
        }
        let expected = neighbours
            .iter()
            .filter(|v| self.keys.contains_key(v))
            .count();
        if receivers.len() != expected {
            return Err(violation(
                from,
                &format!("{} shares for {expected} neighbours", receivers.len()),
            ));
        }
        self.packages.insert(from, package.shares);
        Ok(())
    }

    /// Ends phase 2: for each member of `U2`, the shares addressed to it. The masked inputs are
    /// summed into a freshly allocated vector; a driver that runs round after round should call
    /// [`Self::finish_into`] with the previous round's sum instead.
    pub fn finish(self) -> Result<(ExpectMaskedInputs, BTreeMap<u16, ShareDelivery>), SecAggError> {
        let sum = vec![0; self.params.vector_len];
        self.finish_with_sum(sum)
    }

    /// As [`Self::finish`], but the masked inputs are summed into `buffer`, which is cleared and
    /// resized to the round's vector length first: whatever it held (such as an earlier round's
    /// sum, as [`ExpectUnmasking::finish`] returns it) is overwritten with zeros, and only its
    /// allocation is reused. Zeroing memory that is already mapped costs far less than the page
    /// faults of summing into a fresh allocation of the size of a model each round.
    pub fn finish_into(
        self,
        mut buffer: Vec<u32>,
    ) -> Result<(ExpectMaskedInputs, BTreeMap<u16, ShareDelivery>), SecAggError> {
        buffer.clear();
        buffer.resize(self.params.vector_len, 0);
        self.finish_with_sum(buffer)
    }

    /// Ends phase 2, summing into `sum`, which holds `vector_len` zeros.
    fn finish_with_sum(
        self,
        sum: Vec<u32>,
    ) -> Result<(ExpectMaskedInputs, BTreeMap<u16, ShareDelivery>), SecAggError> {
        debug_assert!(sum.len() == self.params.vector_len && sum.iter().all(|&s| s == 0));
        at_least(&self.params, "share keys", self.packages.len())?;
        let sharers: BTreeSet<u16> = self.packages.keys().copied().collect();
        let senders: Vec<u16> = sharers.iter().copied().collect();
        let mut deliveries: BTreeMap<u16, ShareDelivery> = sharers
            .iter()
            .map(|&to| {
                let delivery = ShareDelivery {
                    session: self.params.session,
                    round: self.params.round,
                    shares: Vec::new(),
                    senders: senders.clone(),
                };
                (to, delivery)
            })
            .collect();
        for share in self.packages.into_values().flatten() {
            if let Some(delivery) = deliveries.get_mut(&share.to) {
                delivery.shares.push(share);
            }
        }
        let next = ExpectMaskedInputs {
            sum,
            params: self.params,
            graph: self.graph,
            keys: self.keys,
            sharers,
            survivors: BTreeSet::new(),
            partial: BTreeMap::new(),
        };
        Ok((next, deliveries))
    }
}

impl ExpectMaskedInputs {
    /// Participants of `U2`, who are asked for masked inputs.
    pub fn participants(&self) -> Vec<u16> {
        self.sharers.iter().copied().collect()
    }

    /// Adds participant `from`'s masked input to the running sum. The input itself is not kept.
    pub fn handle_input(&mut self, from: u16, input: &MaskedInput) -> Result<(), SecAggError> {
        self.check_sender(from, input.session, input.round)?;
        if input.values.len() != self.params.vector_len {
            return Err(violation(
                from,
                &format!(
                    "input of {} words, expected {}",
                    input.values.len(),
                    self.params.vector_len
                ),
            ));
        }
        for (s, v) in self.sum.iter_mut().zip(&input.values) {
            *s = s.wrapping_add(*v);
        }
        self.survivors.insert(from);
        Ok(())
    }

    /// Adds one consecutive piece of participant `from`'s masked input to the running sum: the
    /// pieces must come in order and make up exactly the vector; the last one makes `from` a
    /// survivor. Nothing is kept but the count of words summed.
    pub fn handle_input_chunk(
        &mut self,
        from: u16,
        chunk: &impl InputPiece,
    ) -> Result<(), SecAggError> {
        let header = chunk.header();
        self.check_sender(from, header.session, header.round)?;
        let len = self.params.vector_len;
        let done = self.partial.get(&from).copied().unwrap_or(0);
        let offset = header.offset as usize;
        let words = chunk.word_count();
        if header.total as usize != len
            || offset != done
            || offset + words > len
            || (words == 0 && len > 0)
        {
            return Err(violation(
                from,
                &format!(
                    "input piece of words {offset}..{} of {}, expected the piece from word {done} of {len}",
                    offset + words,
                    header.total
                ),
            ));
        }
        chunk.add_to(&mut self.sum[offset..offset + words]);
        let done = offset + words;
        if done == len {
            self.partial.remove(&from);
            self.survivors.insert(from);
        } else {
            self.partial.insert(from, done);
        }
        Ok(())
    }

    /// Refuses an input from `from` of another session or round, from a participant that did
    /// not share its keys, or from one whose input is already in.
    fn check_sender(&self, from: u16, session: u64, round: u64) -> Result<(), SecAggError> {
        check(&self.params, from, session, round)?;
        if !self.sharers.contains(&from) {
            return Err(violation(
                from,
                "sent an input without having shared its keys",
            ));
        }
        if self.survivors.contains(&from) {
            return Err(violation(from, "sent its input twice"));
        }
        Ok(())
    }

    /// Whether any of participant `from`'s input is in the sum.
    pub fn started(&self, from: u16) -> bool {
        self.survivors.contains(&from) || self.partial.contains_key(&from)
    }

    /// Whether participant `from`'s whole input is in the sum.
    pub fn has_input(&self, from: u16) -> bool {
        self.survivors.contains(&from)
    }

    /// Participants part of whose input is in the sum without the rest: the sum cannot be
    /// unmasked while they are.
    pub fn partially_summed(&self) -> Vec<u16> {
        self.partial.keys().copied().collect()
    }

    /// Ends phase 3: the survivor set (`U3`) for each of them to sign.
    pub fn finish(self) -> Result<(ExpectSignatures, ConsistencyRequest), SecAggError> {
        if let Some(from) = self.partial.keys().next() {
            return Err(violation(
                *from,
                "sent only part of its input: the sum holds a piece it cannot lose",
            ));
        }
        at_least(&self.params, "masked input", self.survivors.len())?;
        let request = ConsistencyRequest {
            session: self.params.session,
            round: self.params.round,
            survivors: self.survivors.iter().copied().collect(),
        };
        let signed_bytes = survivors_signed_bytes(&self.params.digest(), &self.survivors);
        let next = ExpectSignatures {
            params: self.params,
            graph: self.graph,
            keys: self.keys,
            sharers: self.sharers,
            survivors: self.survivors,
            sum: self.sum,
            signed_bytes,
            signatures: BTreeMap::new(),
        };
        Ok((next, request))
    }
}

impl ExpectSignatures {
    /// Participants of `U3`, who are asked to sign it.
    pub fn participants(&self) -> Vec<u16> {
        self.survivors.iter().copied().collect()
    }

    /// Takes participant `from`'s signature on the survivor set, checked against the
    /// certificate it presented: a signature that does not verify would make every participant
    /// refuse to unmask, so it is refused here and its signer left out.
    pub fn handle_signature(
        &mut self,
        from: u16,
        signature: ConsistencySignature,
        verifier: &dyn PeerVerifier,
    ) -> Result<(), SecAggError> {
        check(&self.params, from, signature.session, signature.round)?;
        if !self.survivors.contains(&from) || self.signatures.contains_key(&from) {
            return Err(violation(
                from,
                "unexpected or repeated consistency signature",
            ));
        }
        let (Some(identity), Some(entry)) = (self.params.identity(from), self.keys.get(&from))
        else {
            return Err(violation(from, "a survivor without keys"));
        };
        if !verifier.verify(
            identity,
            &entry.certificate,
            &self.signed_bytes,
            &signature.signature,
        ) {
            return Err(SecAggError::BadConsistencySignature { index: from });
        }
        self.signatures.insert(from, signature.signature);
        Ok(())
    }

    /// Ends phase 4: the unmask request — the survivor set and every signature on it — to send
    /// to each signer (`U4`).
    pub fn finish(self) -> Result<(ExpectUnmasking, UnmaskRequest), SecAggError> {
        at_least(&self.params, "consistency", self.signatures.len())?;
        let signers: BTreeSet<u16> = self.signatures.keys().copied().collect();
        let request = UnmaskRequest {
            session: self.params.session,
            round: self.params.round,
            survivors: self.survivors.iter().copied().collect(),
            signatures: self.signatures.into_iter().collect(),
        };
        let next = ExpectUnmasking {
            params: self.params,
            graph: self.graph,
            keys: self.keys,
            sharers: self.sharers,
            survivors: self.survivors,
            sum: self.sum,
            signers,
            responders: BTreeSet::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
        };
        Ok((next, request))
    }

    /// The survivors whose inputs are in the sum.
    pub fn survivors(&self) -> Vec<u16> {
        self.survivors.iter().copied().collect()
    }
}

impl ExpectUnmasking {
    /// Participants of `U4` (the survivors that signed), who are asked to unmask.
    pub fn participants(&self) -> Vec<u16> {
        self.signers.iter().copied().collect()
    }

    /// Takes participant `from`'s shares. A response holding both kinds of share for one peer,
    /// or the wrong kind, is refused whole.
    pub fn handle_response(
        &mut self,
        from: u16,
        response: UnmaskResponse,
    ) -> Result<(), SecAggError> {
        check(&self.params, from, response.session, response.round)?;
        if !self.signers.contains(&from) || !self.responders.insert(from) {
            return Err(violation(from, "unexpected or repeated unmask response"));
        }
        let holds = |peer: u16| peer == from || self.graph[usize::from(from) - 1].contains(&peer);
        for (peer, share) in &response.self_mask_shares {
            if !self.survivors.contains(peer) || !holds(*peer) || share.x != from {
                return Err(violation(
                    from,
                    &format!("self-mask share of {peer}, which it may not reveal"),
                ));
            }
        }
        for (peer, share) in &response.mask_key_shares {
            if self.survivors.contains(peer)
                || !self.sharers.contains(peer)
                || !holds(*peer)
                || share.x != from
            {
                return Err(violation(
                    from,
                    &format!("mask-key share of {peer}, which it may not reveal"),
                ));
            }
        }
        for (peer, share) in response.self_mask_shares {
            self.self_mask_shares.entry(peer).or_default().push(share);
        }
        for (peer, share) in response.mask_key_shares {
            self.mask_key_shares.entry(peer).or_default().push(share);
        }
        Ok(())
    }

    /// Ends the round: removes every mask and returns the sum of the survivors' inputs. Each
    /// rebuilt secret is checked first against what its owner signed in its advert — a
    /// self-mask seed against its commitment, a mask key against its public key — so shares
    /// that combine to some other secret (tampered by a holder) fail the round with
    /// [`SecAggError::CommitmentMismatch`] rather than leave masks in the sum. Once the caller
    /// is done with the sum, it can hand the vector to the next round's
    /// [`ExpectShares::finish_into`], which zeroes it and sums into it again.
    pub fn finish(mut self) -> Result<Vec<u32>, SecAggError> {
        at_least(&self.params, "unmasking", self.responders.len())?;
        let threshold = self.params.threshold;
        let (session, round) = (self.params.session, self.params.round);
        for &survivor in &self.survivors {
            let shares = self.self_mask_shares.remove(&survivor).unwrap_or_default();
            let seed = reconstruct(survivor, &shares, threshold)?;
            let committed = self
                .keys
                .get(&survivor)
                .map(|entry| entry.keys.self_mask_commitment);
            if committed != Some(self_mask_commitment(session, round, survivor, &seed)) {
                return Err(SecAggError::CommitmentMismatch {
                    index: survivor,
                    secret: SecretKind::SelfMaskSeed,
                });
            }
            subtract_mask(&seed, &mut self.sum);
        }
        for &dropped in self.sharers.difference(&self.survivors) {
            let shares = self.mask_key_shares.remove(&dropped).unwrap_or_default();
            let secret = reconstruct(dropped, &shares, threshold)?;
            let keys = AgreementKeyPair::from_secret_bytes(*secret);
            if self.keys.get(&dropped).map(|entry| entry.keys.mask_public) != Some(keys.public()) {
                return Err(SecAggError::CommitmentMismatch {
                    index: dropped,
                    secret: SecretKind::MaskKey,
                });
            }
            for &survivor in self.graph[usize::from(dropped) - 1]
                .iter()
                .filter(|v| self.survivors.contains(v))
            {
                let Some(entry) = self.keys.get(&survivor) else {
                    continue;
                };
                let seed = keys.derive(
                    &entry.keys.mask_public,
                    &pair_info(session, round, dropped, survivor),
                )?;
                // The survivor added the pair's mask if its index is lower, subtracted it if higher.
                if survivor < dropped {
                    subtract_mask(&seed, &mut self.sum);
                } else {
                    add_mask(&seed, &mut self.sum);
                }
            }
        }
        Ok(self.sum)
    }

    /// The survivors whose inputs are in the sum.
    pub fn survivors(&self) -> Vec<u16> {
        self.survivors.iter().copied().collect()
    }
}

fn reconstruct(
    index: u16,
    shares: &[Share],
    threshold: usize,
) -> Result<zeroize::Zeroizing<[u8; 32]>, SecAggError> {
    if shares.len() < threshold {
        return Err(SecAggError::TooFewShares {
            index,
            have: shares.len(),
            threshold,
        });
    }
    Ok(shamir::combine(shares, threshold)?)
}

fn check(params: &RoundParams, from: u16, session: u64, round: u64) -> Result<(), SecAggError> {
    if params.identity(from).is_none() {
        return Err(violation(from, "not a participant of this round"));
    }
    if session != params.session || round != params.round {
        return Err(SecAggError::WrongRound {
            session,
            round,
            expected: params.round,
        });
    }
    Ok(())
}

fn at_least(params: &RoundParams, phase: &'static str, have: usize) -> Result<(), SecAggError> {
    if have < params.threshold {
        return Err(SecAggError::BelowThreshold {
            phase,
            have,
            threshold: params.threshold,
        });
    }
    Ok(())
}

fn violation(from: u16, detail: &str) -> SecAggError {
    SecAggError::Violation {
        from,
        detail: detail.to_owned(),
    }
}
