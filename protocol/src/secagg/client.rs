//! The participant's side: one state per phase, each consuming itself.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroizing;

use super::consistency::{check_signatures, survivor_set, survivors_signed_bytes};
use super::crypto::{AgreementKeyPair, add_mask, open, seal, subtract_mask};
use super::messages::{
    ConsistencyRequest, ConsistencySignature, EncryptedShare, KeyAdvertisement, KeyDirectory,
    MaskedInput, ShareDelivery, SharePackage, SharePlaintext, UnmaskRequest, UnmaskResponse,
};
use super::params::RoundParams;
use super::shamir::{self, Share};
use super::{SecAggError, pair_info, self_mask_commitment, share_context};

/// Signs with the participant's long-term key (the key of its consortium certificate).
pub trait Signer {
    /// Signs `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError>;
}

/// Checks a peer's certificate and signature.
pub trait PeerVerifier {
    /// Whether `certificate` is a valid consortium certificate for `identity` and `signature` is
    /// its key's signature over `message`.
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool;
}

/// The node's policy on a survivor set, called with the survivors' identities before this
/// participant signs the set and again before it reveals any share; an `Err` (normally
/// [`SecAggError::RefusedByPolicy`]) aborts the round with nothing signed or revealed.
pub type SurvivorCheck<'a> = dyn FnMut(&[&str]) -> Result<(), SecAggError> + 'a;

/// Phase 1: keys advertised, waiting for everyone's keys.
pub struct ExpectDirectory {
    params: RoundParams,
    /// [`RoundParams::digest`] of `params`.
    params_digest: [u8; 32],
    me: u16,
    input: Zeroizing<Vec<u32>>,
    cipher_keys: AgreementKeyPair,
    mask_keys: AgreementKeyPair,
    /// This participant's self-mask seed, committed to in the advertisement.
    self_mask: Zeroizing<[u8; 32]>,
    advertisement: KeyAdvertisement,
}

/// Phase 2: shares sent, waiting for the shares addressed to this participant.
pub struct ExpectDelivery {
    params: RoundParams,
    params_digest: [u8; 32],
    me: u16,
    input: Zeroizing<Vec<u32>>,
    cipher_keys: AgreementKeyPair,
    mask_keys: AgreementKeyPair,
    /// Neighbours that advertised keys, with their public keys `(cipher, mask)`.
    neighbours: BTreeMap<u16, ([u8; 32], [u8; 32])>,
    /// The certificate of every participant in the directory (`U1`), to check their
    /// consistency signatures against.
    certificates: BTreeMap<u16, Vec<u8>>,
    /// This participant's self-mask seed.
    self_mask: Zeroizing<[u8; 32]>,
    /// The shares of its own secrets that it keeps (its own x-coordinate).
    own_shares: (Share, Share),
}

/// Phase 3: masked input sent, waiting for the survivor set to sign.
pub struct ExpectConsistency {
    params: RoundParams,
    params_digest: [u8; 32],
    me: u16,
    /// `U2`, as this participant was told it.
    sharers: BTreeSet<u16>,
    certificates: BTreeMap<u16, Vec<u8>>,
    /// `(mask-key share, self-mask share)` of each participant of `U2` this one holds shares of.
    held: BTreeMap<u16, (Share, Share)>,
}

/// Phase 4: the survivor set signed, waiting for the unmask request.
pub struct ExpectUnmask {
    params: RoundParams,
    me: u16,
    /// The survivor set this participant signed: the only one it will unmask for.
    signed: BTreeSet<u16>,
    certificates: BTreeMap<u16, Vec<u8>>,
    held: BTreeMap<u16, (Share, Share)>,
}

impl ExpectDirectory {
    /// Starts a round with the encoded `input`: makes two fresh key pairs and a fresh self-mask
    /// seed, and signs the public keys, a commitment to the seed and the digest of `params`.
    /// Returns the state and the advertisement to send.
    pub fn new<R: rand::CryptoRng + ?Sized>(
        params: RoundParams,
        me: u16,
        input: Vec<u32>,
        signer: &dyn Signer,
        rng: &mut R,
    ) -> Result<(Self, KeyAdvertisement), SecAggError> {
        params.validate()?;
        if params.identity(me).is_none() {
            return Err(SecAggError::BadParams(format!(
                "index {me} is not a participant"
            )));
        }
        if input.len() != params.vector_len {
            return Err(SecAggError::BadParams(format!(
                "input has {} words, the round expects {}",
                input.len(),
                params.vector_len
            )));
        }
        let cipher_keys = AgreementKeyPair::generate(rng);
        let mask_keys = AgreementKeyPair::generate(rng);
        let self_mask = Zeroizing::new(random_seed(rng));
        let params_digest = params.digest();
        let mut advertisement = KeyAdvertisement {
            session: params.session,
            round: params.round,
            index: me,
            params_digest,
            cipher_public: cipher_keys.public(),
            mask_public: mask_keys.public(),
            self_mask_commitment: self_mask_commitment(
                params.session,
                params.round,
                me,
                &self_mask,
            ),
            signature: Vec::new(),
        };
        advertisement.signature = signer.sign(&advertisement.signed_bytes())?;
        let state = Self {
            params,
            params_digest,
            me,
            input: Zeroizing::new(input),
            cipher_keys,
            mask_keys,
            self_mask,
            advertisement: advertisement.clone(),
        };
        Ok((state, advertisement))
    }

    /// Checks every neighbour's signed keys, and that each was signed for the same round
    /// parameters as this participant's; keeps every participant's certificate for the
    /// consistency round; then Shamir-shares the mask secret key and the self-mask seed among
    /// the neighbours, each share encrypted for its holder.
    pub fn handle_directory<R: rand::CryptoRng + ?Sized>(
        self,
        directory: &KeyDirectory,
        verifier: &dyn PeerVerifier,
        rng: &mut R,
    ) -> Result<(ExpectDelivery, SharePackage), SecAggError> {
        check_round(&self.params, directory.session, directory.round)?;
        let graph = self.params.graph()?;
        let my_neighbours: BTreeSet<u16> =
            graph[usize::from(self.me) - 1].iter().copied().collect();
        let mut seen = BTreeSet::new();
        let mut neighbours = BTreeMap::new();
        let mut certificates = BTreeMap::new();
        for entry in &directory.entries {
            let keys = &entry.keys;
            let identity = self
                .params
                .identity(keys.index)
                .ok_or_else(|| violation(0, "unknown index in directory"))?;
            if !seen.insert(keys.index) {
                return Err(violation(
                    0,
                    &format!("participant {} listed twice", keys.index),
                ));
            }
            check_round(&self.params, keys.session, keys.round)?;
            certificates.insert(keys.index, entry.certificate.clone());
            if keys.index == self.me {
                // The coordinator must relay our own keys unchanged.
                if *keys != self.advertisement {
                    return Err(SecAggError::KeySubstituted {
                        index: self.me,
                        identity: identity.to_owned(),
                    });
                }
                continue;
            }
            // Every entry is checked, not only the neighbours': a key advertised under a
            // certificate the node does not accept (a stranger, a second key under a member's
            // name) stops the round here, whoever it would pair with.
            if !verifier.verify(
                identity,
                &entry.certificate,
                &keys.signed_bytes(),
                &keys.signature,
            ) {
                return Err(SecAggError::KeySubstituted {
                    index: keys.index,
                    identity: identity.to_owned(),
                });
            }
            if keys.params_digest != self.params_digest {
                return Err(SecAggError::ParamsMismatch {
                    index: keys.index,
                    identity: identity.to_owned(),
                });
            }
            if my_neighbours.contains(&keys.index) {
                neighbours.insert(keys.index, (keys.cipher_public, keys.mask_public));
            }
        }
        if !seen.contains(&self.me) {
            return Err(violation(0, "the directory leaves this participant out"));
        }
        let threshold = self.params.threshold;
        if neighbours.len() + 1 < threshold {
            return Err(SecAggError::BelowThreshold {
                phase: "share keys",
                have: neighbours.len() + 1,
                threshold,
            });
        }

        let self_mask = self.self_mask;
        let holders: Vec<u16> = neighbours.keys().copied().chain([self.me]).collect();
        let mask_secret = self.mask_keys.secret_bytes();
        let key_shares = shamir::split(&mask_secret, threshold, &holders, rng)?;
        let seed_shares = shamir::split(&self_mask, threshold, &holders, rng)?;
        let mut own = None;
        let mut shares = Vec::with_capacity(neighbours.len());
        for (key_share, seed_share) in key_shares.into_iter().zip(seed_shares) {
            let to = key_share.x;
            if to == self.me {
                own = Some((key_share, seed_share));
                continue;
            }
            let Some((cipher_public, _)) = neighbours.get(&to) else {
                continue;
            };
            let context = share_context(self.params.session, self.params.round, self.me, to);
            let key = self.cipher_keys.derive(cipher_public, &context)?;
            let plaintext = SharePlaintext {
                from: self.me,
                to,
                mask_key: key_share,
                self_mask: seed_share,
            };
            let bytes = Zeroizing::new(encode_plaintext(&plaintext)?);
            shares.push(EncryptedShare {
                from: self.me,
                to,
                ciphertext: seal(&key, &context, &bytes)?,
            });
        }
        let own_shares = own.ok_or_else(|| violation(self.me, "no own share"))?;
        let package = SharePackage {
            session: self.params.session,
            round: self.params.round,
            shares,
        };
        let next = ExpectDelivery {
            params: self.params,
            params_digest: self.params_digest,
            me: self.me,
            input: self.input,
            cipher_keys: self.cipher_keys,
            mask_keys: self.mask_keys,
            neighbours,
            certificates,
            self_mask,
            own_shares,
        };
        Ok((next, package))
    }
}

impl ExpectDelivery {
    /// Decrypts the shares addressed to this participant and returns its masked input: the input
    /// plus its self-mask plus a pairwise mask with every neighbour that shared (`U2`).
    pub fn handle_delivery(
        self,
        delivery: &ShareDelivery,
    ) -> Result<(ExpectConsistency, MaskedInput), SecAggError> {
        check_round(&self.params, delivery.session, delivery.round)?;
        let senders: BTreeSet<u16> = delivery.senders.iter().copied().collect();
        if let Some(stranger) = senders.iter().find(|v| !self.certificates.contains_key(v)) {
            return Err(violation(
                0,
                &format!("U2 lists {stranger}, which is not in the key directory"),
            ));
        }
        if !senders.contains(&self.me) {
            return Err(violation(
                0,
                "U2 leaves out this participant, whose shares were sent",
            ));
        }
        if senders.len() < self.params.threshold {
            return Err(SecAggError::BelowThreshold {
                phase: "masked input",
                have: senders.len(),
                threshold: self.params.threshold,
            });
        }
        let mut held = BTreeMap::new();
        held.insert(self.me, self.own_shares.clone());
        for share in &delivery.shares {
            let from = share.from;
            if share.to != self.me || !senders.contains(&from) || held.contains_key(&from) {
                return Err(violation(
                    0,
                    &format!("misaddressed or repeated share from {from}"),
                ));
            }
            let Some((cipher_public, _)) = self.neighbours.get(&from) else {
                return Err(violation(
                    0,
                    &format!("share from {from}, which is not a neighbour"),
                ));
            };
            let context = share_context(self.params.session, self.params.round, from, self.me);
            let key = self.cipher_keys.derive(cipher_public, &context)?;
            let bytes = open(&key, &context, &share.ciphertext)
                .map_err(|_| SecAggError::ShareAuthentication { from })?;
            let plaintext =
                decode_plaintext(&bytes).ok_or(SecAggError::ShareAuthentication { from })?;
            if plaintext.from != from || plaintext.to != self.me || plaintext.mask_key.x != self.me
            {
                return Err(SecAggError::ShareAuthentication { from });
            }
            held.insert(from, (plaintext.mask_key, plaintext.self_mask));
        }
        // Every neighbour in U2 must have sent us a share: otherwise we could not help unmask it.
        for neighbour in self.neighbours.keys().filter(|v| senders.contains(v)) {
            if !held.contains_key(neighbour) {
                return Err(violation(
                    0,
                    &format!("no share from neighbour {neighbour}, though it is in U2"),
                ));
            }
        }

        let mut values = self.input.to_vec();
        add_mask(&self.self_mask, &mut values);
        for (&peer, (_, mask_public)) in self.neighbours.iter().filter(|(v, _)| senders.contains(v))
        {
            let seed = self.mask_keys.derive(
                mask_public,
                &pair_info(self.params.session, self.params.round, self.me, peer),
            )?;
            if self.me < peer {
                add_mask(&seed, &mut values);
            } else {
                subtract_mask(&seed, &mut values);
            }
        }
        let masked = MaskedInput {
            session: self.params.session,
            round: self.params.round,
            values,
        };
        // Keep only shares of U2 members; they are all we may be asked about.
        held.retain(|v, _| senders.contains(v));
        Ok((
            ExpectConsistency {
                params: self.params,
                params_digest: self.params_digest,
                me: self.me,
                sharers: senders,
                certificates: self.certificates,
                held,
            },
            masked,
        ))
    }
}

impl ExpectConsistency {
    /// Signs the survivor set `U3` of the request, once: after checking that it holds this
    /// participant, lies within `U2`, reaches the threshold, and passes the node's `check`
    /// (called with the survivors' identities before anything is signed). Consumes the state:
    /// a participant signs one survivor set per round, and will unmask only for that set.
    pub fn handle_consistency(
        self,
        request: &ConsistencyRequest,
        signer: &dyn Signer,
        check: &mut SurvivorCheck<'_>,
    ) -> Result<(ExpectUnmask, ConsistencySignature), SecAggError> {
        check_round(&self.params, request.session, request.round)?;
        let survivors = survivor_set(&request.survivors)?;
        if !survivors.contains(&self.me) {
            return Err(violation(
                0,
                "this participant sent its input but is not listed as a survivor",
            ));
        }
        if let Some(stranger) = survivors.iter().find(|v| !self.sharers.contains(v)) {
            return Err(violation(
                0,
                &format!("survivor {stranger} is not among the participants that shared (U2)"),
            ));
        }
        if survivors.len() < self.params.threshold {
            return Err(SecAggError::BelowThreshold {
                phase: "consistency",
                have: survivors.len(),
                threshold: self.params.threshold,
            });
        }
        check(&identities(&self.params, &survivors))?;
        let signature = signer.sign(&survivors_signed_bytes(&self.params_digest, &survivors))?;
        let answer = ConsistencySignature {
            session: self.params.session,
            round: self.params.round,
            signature,
        };
        let next = ExpectUnmask {
            params: self.params,
            me: self.me,
            signed: survivors,
            certificates: self.certificates,
            held: self.held,
        };
        Ok((next, answer))
    }

    /// This participant's index.
    pub fn index(&self) -> u16 {
        self.me
    }
}

impl ExpectUnmask {
    /// Reveals, for each peer this participant holds shares of, the share of its self-mask seed
    /// if it survived, or of its mask secret key if it dropped — never both — but only if the
    /// request's survivors are exactly the set this participant signed, the request carries at
    /// least `t` signatures on that set from distinct survivors, every one of them verifying
    /// against its signer's certificate from the key directory, and the node's `check` passes.
    /// Consumes the state: a participant answers one unmask request per round.
    pub fn handle_unmask(
        self,
        request: &UnmaskRequest,
        verifier: &dyn PeerVerifier,
        check: &mut SurvivorCheck<'_>,
    ) -> Result<UnmaskResponse, SecAggError> {
        check_round(&self.params, request.session, request.round)?;
        let survivors = survivor_set(&request.survivors)?;
        if survivors != self.signed {
            return Err(SecAggError::SurvivorsChanged);
        }
        check_signatures(
            &self.params,
            &survivors,
            &request.signatures,
            &self.certificates,
            verifier,
        )?;
        check(&identities(&self.params, &survivors))?;
        let mut response = UnmaskResponse {
            session: self.params.session,
            round: self.params.round,
            self_mask_shares: Vec::new(),
            mask_key_shares: Vec::new(),
        };
        for (peer, (mask_key, self_mask)) in self.held {
            if survivors.contains(&peer) {
                response.self_mask_shares.push((peer, self_mask));
            } else {
                response.mask_key_shares.push((peer, mask_key));
            }
        }
        Ok(response)
    }

    /// This participant's index.
    pub fn index(&self) -> u16 {
        self.me
    }
}

/// The identities of `indices` (each a participant: checked against `U2` before).
fn identities<'a>(params: &'a RoundParams, indices: &BTreeSet<u16>) -> Vec<&'a str> {
    indices
        .iter()
        .filter_map(|&index| params.identity(index))
        .collect()
}

fn check_round(params: &RoundParams, session: u64, round: u64) -> Result<(), SecAggError> {
    if session != params.session || round != params.round {
        return Err(SecAggError::WrongRound {
            session,
            round,
            expected: params.round,
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

fn random_seed<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> [u8; 32] {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    seed
}

fn encode_plaintext(plaintext: &SharePlaintext) -> Result<Vec<u8>, SecAggError> {
    bincode::serde::encode_to_vec(plaintext, bincode::config::standard())
        .map_err(|e| SecAggError::BadParams(format!("cannot encode share: {e}")))
}

fn decode_plaintext(bytes: &[u8]) -> Option<SharePlaintext> {
    let config = bincode::config::standard().with_limit::<4096>();
    match bincode::serde::decode_from_slice::<SharePlaintext, _>(bytes, config) {
        Ok((plaintext, used)) if used == bytes.len() => Some(plaintext),
        _ => None,
    }
}

/// A participant's progress through one round, for drivers that keep it in a field. Each phase
/// can be answered once; a request arriving in the wrong phase, or a second time, is refused.
pub enum ParticipantState {
    /// Keys advertised.
    Directory(ExpectDirectory),
    /// Shares sent.
    Delivery(ExpectDelivery),
    /// Masked input sent.
    Consistency(ExpectConsistency),
    /// Survivor set signed.
    Unmask(ExpectUnmask),
    /// Unmasking shares sent, or the round aborted: nothing more is answered.
    Done,
}

impl ParticipantState {
    /// Answers the key directory.
    pub fn handle_directory<R: rand::CryptoRng + ?Sized>(
        &mut self,
        directory: &KeyDirectory,
        verifier: &dyn PeerVerifier,
        rng: &mut R,
    ) -> Result<SharePackage, SecAggError> {
        match std::mem::replace(self, Self::Done) {
            Self::Directory(state) => {
                let (next, package) = state.handle_directory(directory, verifier, rng)?;
                *self = Self::Delivery(next);
                Ok(package)
            }
            _ => Err(out_of_phase("key directory")),
        }
    }

    /// Answers the share delivery.
    pub fn handle_delivery(
        &mut self,
        delivery: &ShareDelivery,
    ) -> Result<MaskedInput, SecAggError> {
        match std::mem::replace(self, Self::Done) {
            Self::Delivery(state) => {
                let (next, input) = state.handle_delivery(delivery)?;
                *self = Self::Consistency(next);
                Ok(input)
            }
            _ => Err(out_of_phase("share delivery")),
        }
    }

    /// Answers the consistency request: signs the survivor set once; a second request is
    /// refused, so a participant never signs two survivor sets.
    pub fn handle_consistency(
        &mut self,
        request: &ConsistencyRequest,
        signer: &dyn Signer,
        check: &mut SurvivorCheck<'_>,
    ) -> Result<ConsistencySignature, SecAggError> {
        match std::mem::replace(self, Self::Done) {
            Self::Consistency(state) => {
                let (next, signature) = state.handle_consistency(request, signer, check)?;
                *self = Self::Unmask(next);
                Ok(signature)
            }
            _ => Err(out_of_phase("consistency request")),
        }
    }

    /// Answers the unmask request; a second request is refused, so no peer's two kinds of share
    /// are ever both released.
    pub fn handle_unmask(
        &mut self,
        request: &UnmaskRequest,
        verifier: &dyn PeerVerifier,
        check: &mut SurvivorCheck<'_>,
    ) -> Result<UnmaskResponse, SecAggError> {
        match std::mem::replace(self, Self::Done) {
            Self::Unmask(state) => state.handle_unmask(request, verifier, check),
            _ => Err(out_of_phase("unmask request")),
        }
    }
}

fn out_of_phase(what: &str) -> SecAggError {
    violation(0, &format!("{what} arrived out of phase or a second time"))
}
