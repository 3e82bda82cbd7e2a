//! The coordinator's side: one state per phase. Each collects answers with `handle_*` until the
//! driver decides the phase is over (everyone answered, or the deadline passed), then `finish`
//! consumes it and returns the next state and what to send.

use std::collections::{BTreeMap, BTreeSet};

use super::crypto::{AgreementKeyPair, add_mask, subtract_mask};
use super::messages::{
    DirectoryEntry, EncryptedShare, KeyAdvertisement, KeyDirectory, MaskedInput, ShareDelivery,
    SharePackage, UnmaskRequest, UnmaskResponse,
};
use super::params::RoundParams;
use super::shamir::{self, Share};
use super::{SecAggError, pair_info};

/// Phase 1: collecting key advertisements.
#[derive(Debug)]
pub struct ExpectKeys {
    params: RoundParams,
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
}

/// Phase 4: collecting unmasking shares.
#[derive(Debug)]
pub struct ExpectUnmasking {
    params: RoundParams,
    graph: Vec<Vec<u16>>,
    keys: BTreeMap<u16, DirectoryEntry>,
    sharers: BTreeSet<u16>,
    survivors: BTreeSet<u16>,
    sum: Vec<u32>,
    /// Who answered (`U4`).
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
        check(&self.params, from, input.session, input.round)?;
        if !self.sharers.contains(&from) {
            return Err(violation(
                from,
                "sent an input without having shared its keys",
            ));
        }
        if self.survivors.contains(&from) {
            return Err(violation(from, "sent its input twice"));
        }
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

    /// Ends phase 3: the list of survivors (`U3`) to send to each of them.
    pub fn finish(self) -> Result<(ExpectUnmasking, UnmaskRequest), SecAggError> {
        at_least(&self.params, "masked input", self.survivors.len())?;
        let request = UnmaskRequest {
            session: self.params.session,
            round: self.params.round,
            survivors: self.survivors.iter().copied().collect(),
        };
        let next = ExpectUnmasking {
            params: self.params,
            graph: self.graph,
            keys: self.keys,
            sharers: self.sharers,
            survivors: self.survivors,
            sum: self.sum,
            responders: BTreeSet::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
        };
        Ok((next, request))
    }
}

impl ExpectUnmasking {
    /// Participants of `U3`, who are asked to unmask.
    pub fn participants(&self) -> Vec<u16> {
        self.survivors.iter().copied().collect()
    }

    /// Takes participant `from`'s shares. A response holding both kinds of share for one peer,
    /// or the wrong kind, is refused whole.
    pub fn handle_response(
        &mut self,
        from: u16,
        response: UnmaskResponse,
    ) -> Result<(), SecAggError> {
        check(&self.params, from, response.session, response.round)?;
        if !self.survivors.contains(&from) || !self.responders.insert(from) {
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

    /// Ends the round: removes every mask and returns the sum of the survivors' inputs. Once the
    /// caller is done with the sum, it can hand the vector to the next round's
    /// [`ExpectShares::finish_into`], which zeroes it and sums into it again.
    pub fn finish(mut self) -> Result<Vec<u32>, SecAggError> {
        at_least(&self.params, "unmasking", self.responders.len())?;
        let threshold = self.params.threshold;
        let (session, round) = (self.params.session, self.params.round);
        for &survivor in &self.survivors {
            let shares = self.self_mask_shares.remove(&survivor).unwrap_or_default();
            let seed = reconstruct(survivor, &shares, threshold)?;
            subtract_mask(&seed, &mut self.sum);
        }
        for &dropped in self.sharers.difference(&self.survivors) {
            let shares = self.mask_key_shares.remove(&dropped).unwrap_or_default();
            let secret = reconstruct(dropped, &shares, threshold)?;
            let keys = AgreementKeyPair::from_secret_bytes(*secret);
            // Shares that combine to some other key (tampered by a holder) would leave masks in
            // the sum: check the rebuilt key against the one the participant advertised.
            if self.keys.get(&dropped).map(|entry| entry.keys.mask_public) != Some(keys.public()) {
                return Err(violation(
                    dropped,
                    "the shares of its mask key rebuild a different key",
                ));
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
