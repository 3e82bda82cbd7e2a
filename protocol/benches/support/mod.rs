//! What the secure-aggregation benchmarks share: a consortium of hospitals whose long-term keys
//! sign their round keys (Ed25519, as in the protocol's own tests, or ECDSA P-256, the key type
//! of the consortium's certificates), and an honest round recorded message by message so that
//! the coordinator's side can be replayed into fresh states.

use std::collections::BTreeMap;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, UnparsedPublicKey, VerificationAlgorithm,
};

use medfed_protocol::secagg::{
    ConsistencySignature, ExpectDirectory, ExpectKeys, ExpectMaskedInputs, ExpectShares,
    ExpectSignatures, ExpectUnmasking, KeyAdvertisement, MaskedInput, Participant,
    ParticipantState, PeerVerifier, RoundParams, SecAggError, SharePackage, Signer, UnmaskResponse,
};

/// Session of every benchmarked round.
pub(crate) const SESSION: u64 = 77;
/// Round of every benchmarked round.
pub(crate) const ROUND: u64 = 3;

/// Parameters of a round of `n` hospitals where everyone pairs with everyone.
pub(crate) fn round_params(n: usize, vector_len: usize) -> RoundParams {
    let participants = (1..=n)
        .map(|i| Participant {
            index: i as u16,
            identity: format!("hospital-{i}"),
        })
        .collect();
    let mut params = RoundParams {
        session: SESSION,
        round: ROUND,
        participants,
        threshold: 0,
        neighbours: None,
        graph_seed: [9; 32],
        vector_len,
        encoding_digest: [0; 32],
    };
    params.threshold = RoundParams::default_threshold(params.holders_per_secret());
    params
}

/// Every message the participants of one honest round send the coordinator, recorded so that
/// the coordinator's side can be replayed into a fresh state of any phase before each iteration.
pub(crate) struct RecordedRound {
    params: RoundParams,
    /// `(index, advertisement, certificate)`.
    pub(crate) keys: Vec<(u16, KeyAdvertisement, Vec<u8>)>,
    /// `(index, encrypted shares)`.
    pub(crate) packages: Vec<(u16, SharePackage)>,
    /// `(index, masked input)` of the participants that sent one (U3).
    pub(crate) inputs: Vec<(u16, MaskedInput)>,
    /// `(index, signature on U3)`.
    pub(crate) signatures: Vec<(u16, ConsistencySignature)>,
    /// `(index, unmasking shares)`.
    pub(crate) responses: Vec<(u16, UnmaskResponse)>,
    /// The hospitals' keys, whose verifier the replayed coordinator checks signatures with.
    consortium: Consortium,
}

impl RecordedRound {
    /// Runs a round of `n` participants ([`round_params`]) with random inputs of `vector_len`
    /// words; with `dropout`, participant 3 stops after sharing its keys (it is in U2 but sends
    /// no masked input). Checks the unmasked sum.
    pub(crate) fn new(n: usize, vector_len: usize, dropout: bool) -> Self {
        let dropped: Option<u16> = dropout.then_some(3);
        let params = round_params(n, vector_len);
        let consortium = Consortium::new(n);
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let inputs: Vec<Vec<u32>> = (0..n)
            .map(|_| (0..vector_len).map(|_| rng.next_u32()).collect())
            .collect();

        let mut round = Self {
            params: params.clone(),
            keys: Vec::new(),
            packages: Vec::new(),
            inputs: Vec::new(),
            signatures: Vec::new(),
            responses: Vec::new(),
            consortium,
        };
        let mut states = BTreeMap::new();
        let consortium = &round.consortium;
        for (index, input) in (1..=n as u16).zip(&inputs) {
            let (state, keys) = ExpectDirectory::new(
                params.clone(),
                index,
                input.clone(),
                consortium.signer(index),
                &mut rng,
            )
            .expect("participant starts");
            round
                .keys
                .push((index, keys, consortium.certificate(index)));
            states.insert(index, ParticipantState::Directory(state));
        }
        let mut server = ExpectKeys::new(params).expect("valid parameters");
        for (index, keys, certificate) in round.keys.clone() {
            server
                .handle_keys(index, keys, certificate)
                .expect("keys accepted");
        }
        let (_, directory) = server.finish().expect("everyone advertised");
        for (&index, state) in &mut states {
            let package = state
                .handle_directory(&directory, &consortium.verifier, &mut rng)
                .expect("directory accepted");
            round.packages.push((index, package));
        }
        let (_, deliveries) = round.replay_shares().finish().expect("everyone shared");
        for (&index, state) in &mut states {
            if Some(index) == dropped {
                continue;
            }
            let input = state
                .handle_delivery(&deliveries[&index])
                .expect("delivery accepted");
            round.inputs.push((index, input));
        }
        let (_, consistency) = round.replay_inputs().finish().expect("enough inputs");
        for &index in &consistency.survivors {
            let signature =
                states
                    .get_mut(&index)
                    .expect("a survivor was a participant")
                    .handle_consistency(&consistency, round.consortium.signer(index), &mut |_| {
                        Ok(())
                    })
                    .expect("consistency request accepted");
            round.signatures.push((index, signature));
        }
        let (_, request) = round
            .signing(round.replay_inputs())
            .finish()
            .expect("enough signatures");
        for (index, _) in &request.signatures {
            let response = states
                .get_mut(index)
                .expect("a signer was a participant")
                .handle_unmask(&request, &round.consortium.verifier, &mut |_| Ok(()))
                .expect("unmask request accepted");
            round.responses.push((*index, response));
        }

        let mut expected = vec![0u32; vector_len];
        for (index, input) in (1..=n as u16).zip(&inputs) {
            if Some(index) != dropped {
                for (sum, value) in expected.iter_mut().zip(input) {
                    *sum = sum.wrapping_add(*value);
                }
            }
        }
        let sum = round.coordinator().finish().expect("the round unmasks");
        assert!(
            sum == expected,
            "the unmasked sum is not the survivors' sum"
        );
        round
    }

    /// A fresh coordinator fed the recorded keys and shares, about to end phase 2.
    pub(crate) fn replay_shares(&self) -> ExpectShares {
        let mut server = ExpectKeys::new(self.params.clone()).expect("valid parameters");
        for (index, keys, certificate) in &self.keys {
            server
                .handle_keys(*index, keys.clone(), certificate.clone())
                .expect("keys accepted");
        }
        let (mut server, _) = server.finish().expect("everyone advertised");
        for (index, package) in &self.packages {
            server
                .handle_package(*index, package.clone())
                .expect("shares accepted");
        }
        server
    }

    /// A fresh coordinator fed the recorded keys, shares and masked inputs.
    pub(crate) fn replay_inputs(&self) -> ExpectMaskedInputs {
        let (mut server, _) = self.replay_shares().finish().expect("everyone shared");
        for (index, input) in &self.inputs {
            server.handle_input(*index, input).expect("input accepted");
        }
        server
    }

    /// `server`, which holds the recorded masked inputs, taken to phase 4 and fed the recorded
    /// signatures on the survivor set.
    pub(crate) fn signing(&self, server: ExpectMaskedInputs) -> ExpectSignatures {
        let (mut server, _) = server.finish().expect("enough inputs");
        for (index, signature) in &self.signatures {
            server
                .handle_signature(*index, signature.clone(), &self.consortium.verifier)
                .expect("signature accepted");
        }
        server
    }

    /// `server`, which holds the recorded masked inputs, taken to phase 5 and fed the recorded
    /// unmasking shares: ready to unmask.
    pub(crate) fn unmasking(&self, server: ExpectMaskedInputs) -> ExpectUnmasking {
        let (mut server, _) = self.signing(server).finish().expect("enough signatures");
        for (index, response) in &self.responses {
            server
                .handle_response(*index, response.clone())
                .expect("response accepted");
        }
        server
    }

    /// A fresh coordinator fed every recorded message, ready to unmask.
    pub(crate) fn coordinator(&self) -> ExpectUnmasking {
        self.unmasking(self.replay_inputs())
    }
}

/// Long-term keys of `n` hospitals; a "certificate" is the raw public key, as in the protocol's
/// own tests.
pub(crate) struct Consortium {
    signers: Vec<Box<dyn Signer>>,
    pub(crate) verifier: KeyVerifier,
}

impl Consortium {
    /// Ed25519 keys from a fixed seed: the same hospital signs the same bytes alike every time
    /// (a participant rebuilt from the same seed advertises the same signed keys).
    pub(crate) fn new(n: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut signers: Vec<Box<dyn Signer>> = Vec::with_capacity(n);
        let mut public = BTreeMap::new();
        for i in 1..=n {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any seed is a key");
            public.insert(format!("hospital-{i}"), pair.public_key().as_ref().to_vec());
            signers.push(Box::new(Ed25519Signer(pair)));
        }
        Self {
            signers,
            verifier: KeyVerifier {
                keys: public,
                algorithm: &ED25519,
            },
        }
    }

    /// ECDSA P-256 keys, the type of the consortium certificates' keys (as the nodes sign with
    /// them: ASN.1 signatures over SHA-256, randomised, from the OS RNG).
    #[allow(
        dead_code,
        reason = "the secagg bench uses it, the aggregate bench does not"
    )]
    pub(crate) fn ecdsa(n: usize) -> Self {
        let rng = SystemRandom::new();
        let mut signers: Vec<Box<dyn Signer>> = Vec::with_capacity(n);
        let mut public = BTreeMap::new();
        for i in 1..=n {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .expect("the OS RNG works");
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .expect("a generated key parses");
            public.insert(format!("hospital-{i}"), pair.public_key().as_ref().to_vec());
            signers.push(Box::new(EcdsaSigner {
                pair,
                rng: rng.clone(),
            }));
        }
        Self {
            signers,
            verifier: KeyVerifier {
                keys: public,
                algorithm: &ECDSA_P256_SHA256_ASN1,
            },
        }
    }

    pub(crate) fn signer(&self, index: u16) -> &dyn Signer {
        self.signers[usize::from(index) - 1].as_ref()
    }

    pub(crate) fn certificate(&self, index: u16) -> Vec<u8> {
        self.verifier.keys[&format!("hospital-{index}")].clone()
    }
}

/// Signs with a hospital's Ed25519 key.
struct Ed25519Signer(Ed25519KeyPair);

impl Signer for Ed25519Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(self.0.sign(message).as_ref().to_vec())
    }
}

/// Signs with a hospital's ECDSA P-256 key.
struct EcdsaSigner {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer for EcdsaSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        self.pair
            .sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| SecAggError::BadParams("signing failed".into()))
    }
}

/// Checks that the "certificate" is the identity's key and that it signed the message.
pub(crate) struct KeyVerifier {
    keys: BTreeMap<String, Vec<u8>>,
    algorithm: &'static dyn VerificationAlgorithm,
}

impl PeerVerifier for KeyVerifier {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.keys
            .get(identity)
            .is_some_and(|key| key == certificate)
            && UnparsedPublicKey::new(self.algorithm, certificate)
                .verify(message, signature)
                .is_ok()
    }
}
