//! Helpers shared by the fuzz targets and the seed generator (`examples/seeds.rs`).
//!
//! Everything here drives the real `medfed-protocol` code; nothing re-implements it. The node's
//! CSV loader is fuzzed through `medfed-node` itself, built without its `torch` feature (libtorch
//! cannot be built with the fuzzing sanitizers).

use std::collections::BTreeMap;

use medfed_protocol::codec::MAX_FRAME_LEN;
use medfed_protocol::secagg::crypto::AgreementKeyPair;
use medfed_protocol::secagg::{
    ConsistencySignature, ExpectKeys, ExpectMaskedInputs, ExpectShares, ExpectSignatures,
    ExpectUnmasking, KeyAdvertisement, MaskedInput, Participant, PeerVerifier, RoundParams,
    SecAggError, SharePackage, Signer, UnmaskResponse,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// bincode configuration of the wire (varint, with the frame cap as the decode limit).
pub fn wire_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Decodes one value from the front of `bytes`, returning it and the rest.
pub fn take<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<(T, &[u8])> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, wire_config()).ok()?;
    Some((value, &bytes[used..]))
}

/// Encodes one value with [`wire_config`].
pub fn put<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    out.extend(bincode::serde::encode_to_vec(value, wire_config()).expect("encodable"));
}

/// Signs nothing: the fuzz targets use a verifier that accepts every signature.
pub struct NoSigner;

impl Signer for NoSigner {
    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(vec![0xAA; 64])
    }
}

/// Accepts every certificate and signature (signature checks are not what these targets fuzz).
pub struct AcceptAll;

impl PeerVerifier for AcceptAll {
    fn verify(&self, _: &str, _: &[u8], _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// Session of the fuzzed secure-aggregation rounds.
pub const SESSION: u64 = 77;
/// Round of the fuzzed secure-aggregation rounds.
pub const ROUND: u64 = 3;
/// Vector length of the fuzzed secure-aggregation rounds.
pub const VECTOR_LEN: usize = 4;

/// Parameters of a small complete-graph round of `n` participants with threshold `threshold`.
pub fn round_params(n: u16, threshold: usize) -> RoundParams {
    RoundParams {
        session: SESSION,
        round: ROUND,
        participants: (1..=n)
            .map(|index| Participant {
                index,
                identity: format!("hospital-{index}"),
            })
            .collect(),
        threshold,
        neighbours: None,
        graph_seed: [9; 32],
        vector_len: VECTOR_LEN,
        encoding_digest: [0; 32],
    }
}

/// The node policy of the fuzzed participants: every survivor set is acceptable.
pub fn accept_all(_: &[&str]) -> Result<(), SecAggError> {
    Ok(())
}

/// HKDF info and AEAD associated data of a share from `from` to `to` (the protocol's
/// `share_context`, which is private; written out so a target can seal shares as a peer would).
pub fn share_context(from: u16, to: u16) -> Vec<u8> {
    let mut info = b"medfed-secagg-share-v1".to_vec();
    info.extend_from_slice(&SESSION.to_be_bytes());
    info.extend_from_slice(&ROUND.to_be_bytes());
    info.extend_from_slice(&from.to_be_bytes());
    info.extend_from_slice(&to.to_be_bytes());
    info
}

/// A fixed-seed RNG (fuzz runs must be reproducible).
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A peer simulated by a target: its two key pairs.
pub struct FakePeer {
    /// Cipher key pair.
    pub cipher: AgreementKeyPair,
    /// Mask key pair.
    pub mask: AgreementKeyPair,
}

impl FakePeer {
    /// Fresh keys from `rng`.
    pub fn new(rng: &mut ChaCha20Rng) -> Self {
        Self {
            cipher: AgreementKeyPair::generate(rng),
            mask: AgreementKeyPair::generate(rng),
        }
    }

    /// Its (unsigned) advertisement as participant `index` of the round with `params`. Its
    /// self-mask commitment is to no seed at all (no fake peer is ever unmasked).
    pub fn advertisement(&self, index: u16, params: &RoundParams) -> KeyAdvertisement {
        KeyAdvertisement {
            session: SESSION,
            round: ROUND,
            index,
            params_digest: params.digest(),
            cipher_public: self.cipher.public(),
            mask_public: self.mask.public(),
            self_mask_commitment: [0; 32],
            signature: vec![0xAA; 64],
        }
    }
}

/// One input to the coordinator's secure-aggregation states, as the `secagg_server` target reads
/// them from its input (a stream of these, bincode-encoded one after the other).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ServerOp {
    /// Keys from a participant, with the certificate of its connection.
    Keys {
        /// Sender.
        from: u16,
        /// Its advertisement.
        keys: KeyAdvertisement,
        /// Its certificate.
        certificate: Vec<u8>,
    },
    /// A share package.
    Package {
        /// Sender.
        from: u16,
        /// The package.
        package: SharePackage,
    },
    /// A masked input.
    Input {
        /// Sender.
        from: u16,
        /// The input.
        input: MaskedInput,
    },
    /// A signature on the survivor set.
    Signature {
        /// Sender.
        from: u16,
        /// The signature.
        signature: ConsistencySignature,
    },
    /// An unmasking response.
    Response {
        /// Sender.
        from: u16,
        /// The response.
        response: UnmaskResponse,
    },
    /// The phase deadline: finish the current phase.
    Finish,
}

/// The coordinator's state across phases.
pub enum Server {
    /// Phase 1.
    Keys(ExpectKeys),
    /// Phase 2.
    Shares(ExpectShares),
    /// Phase 3.
    Inputs(ExpectMaskedInputs),
    /// Phase 4.
    Signatures(ExpectSignatures),
    /// Phase 5.
    Unmasking(ExpectUnmasking),
    /// Finished (with the sum) or aborted.
    Done(Option<Vec<u32>>),
}

impl Server {
    /// Applies one op. Errors from `handle_*` leave the state as it was (the driver closes that
    /// peer); an error from `finish` aborts the round.
    pub fn apply(self, op: ServerOp) -> Self {
        match (self, op) {
            (
                Self::Keys(mut s),
                ServerOp::Keys {
                    from,
                    keys,
                    certificate,
                },
            ) => {
                let _ = s.handle_keys(from, keys, certificate);
                Self::Keys(s)
            }
            (Self::Shares(mut s), ServerOp::Package { from, package }) => {
                let _ = s.handle_package(from, package);
                Self::Shares(s)
            }
            (Self::Inputs(mut s), ServerOp::Input { from, input }) => {
                let _ = s.handle_input(from, &input);
                Self::Inputs(s)
            }
            (Self::Signatures(mut s), ServerOp::Signature { from, signature }) => {
                let _ = s.handle_signature(from, signature, &AcceptAll);
                Self::Signatures(s)
            }
            (Self::Unmasking(mut s), ServerOp::Response { from, response }) => {
                let _ = s.handle_response(from, response);
                Self::Unmasking(s)
            }
            (Self::Keys(s), ServerOp::Finish) => match s.finish() {
                Ok((next, _)) => Self::Shares(next),
                Err(_) => Self::Done(None),
            },
            (Self::Shares(s), ServerOp::Finish) => match s.finish() {
                Ok((next, deliveries)) => {
                    for (to, delivery) in &deliveries {
                        assert!(delivery.shares.iter().all(|share| share.to == *to));
                    }
                    Self::Inputs(next)
                }
                Err(_) => Self::Done(None),
            },
            (Self::Inputs(s), ServerOp::Finish) => match s.finish() {
                Ok((next, _)) => Self::Signatures(next),
                Err(_) => Self::Done(None),
            },
            (Self::Signatures(s), ServerOp::Finish) => match s.finish() {
                Ok((next, request)) => {
                    // Exactly the signers are asked to unmask, for the survivors they signed.
                    let signers: Vec<u16> = request.signatures.iter().map(|(i, _)| *i).collect();
                    assert_eq!(signers, next.participants());
                    assert_eq!(request.survivors, next.survivors());
                    Self::Unmasking(next)
                }
                Err(_) => Self::Done(None),
            },
            (Self::Unmasking(s), ServerOp::Finish) => match s.finish() {
                Ok(sum) => {
                    assert_eq!(sum.len(), VECTOR_LEN);
                    Self::Done(Some(sum))
                }
                Err(_) => Self::Done(None),
            },
            (state, _) => state,
        }
    }
}

/// Runs an honest round of `n` participants (threshold `threshold`) in which participant
/// `drop_after_shares` (if any) stops after sharing, recording what the coordinator receives.
/// Returns the ops and the expected sum.
pub fn honest_server_ops(
    n: u16,
    threshold: usize,
    drop_after_shares: Option<u16>,
) -> (Vec<ServerOp>, Vec<u32>) {
    use medfed_protocol::secagg::ParticipantState;
    use medfed_protocol::secagg::{ExpectDirectory, KeyDirectory};

    let params = round_params(n, threshold);
    let mut rng = rng(1);
    let mut ops = Vec::new();
    let mut server = ExpectKeys::new(params.clone()).expect("valid params");
    let mut states = BTreeMap::new();
    let inputs: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            (0..VECTOR_LEN as u32)
                .map(|j| 1000 * u32::from(i) + j)
                .collect()
        })
        .collect();
    for index in 1..=n {
        let (state, keys) = ExpectDirectory::new(
            params.clone(),
            index,
            inputs[usize::from(index) - 1].clone(),
            &NoSigner,
            &mut rng,
        )
        .expect("honest keys");
        let certificate = vec![index as u8; 8];
        server
            .handle_keys(index, keys.clone(), certificate.clone())
            .expect("honest keys accepted");
        ops.push(ServerOp::Keys {
            from: index,
            keys,
            certificate,
        });
        states.insert(index, ParticipantState::Directory(state));
    }
    ops.push(ServerOp::Finish);
    let (mut server, directory): (_, KeyDirectory) = server.finish().expect("phase 1");
    for (&index, state) in &mut states {
        let package = state
            .handle_directory(&directory, &AcceptAll, &mut rng)
            .expect("honest shares");
        server
            .handle_package(index, package.clone())
            .expect("shares accepted");
        ops.push(ServerOp::Package {
            from: index,
            package,
        });
    }
    ops.push(ServerOp::Finish);
    let (mut server, deliveries) = server.finish().expect("phase 2");
    let mut expected = vec![0u32; VECTOR_LEN];
    for (&index, delivery) in &deliveries {
        if Some(index) == drop_after_shares {
            continue;
        }
        let state = states.get_mut(&index).expect("participant");
        let input = state.handle_delivery(delivery).expect("honest input");
        server.handle_input(index, &input).expect("input accepted");
        for (e, v) in expected.iter_mut().zip(&inputs[usize::from(index) - 1]) {
            *e = e.wrapping_add(*v);
        }
        ops.push(ServerOp::Input { from: index, input });
    }
    ops.push(ServerOp::Finish);
    let (mut server, consistency) = server.finish().expect("phase 3");
    for &index in &consistency.survivors {
        let state = states.get_mut(&index).expect("participant");
        let signature = state
            .handle_consistency(&consistency, &NoSigner, &mut accept_all)
            .expect("honest consistency request");
        server
            .handle_signature(index, signature.clone(), &AcceptAll)
            .expect("signature accepted");
        ops.push(ServerOp::Signature {
            from: index,
            signature,
        });
    }
    ops.push(ServerOp::Finish);
    let (mut server, request) = server.finish().expect("phase 4");
    for (index, _) in &request.signatures {
        let state = states.get_mut(index).expect("participant");
        let response = state
            .handle_unmask(&request, &AcceptAll, &mut accept_all)
            .expect("honest unmask");
        server
            .handle_response(*index, response.clone())
            .expect("response accepted");
        ops.push(ServerOp::Response {
            from: *index,
            response,
        });
    }
    ops.push(ServerOp::Finish);
    assert_eq!(server.finish().expect("phase 5"), expected);
    (ops, expected)
}
