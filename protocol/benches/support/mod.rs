//! What the secure-aggregation benchmarks share: a consortium of hospitals whose long-term keys
//! sign their round keys, as in the protocol's own tests, and an honest round recorded message by
//! message so that the coordinator's side can be replayed into fresh states.

use std::collections::BTreeMap;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use medfed_protocol::secagg::{
    ExpectDirectory, ExpectKeys, ExpectMaskedInputs, ExpectShares, ExpectUnmasking,
    KeyAdvertisement, MaskedInput, Participant, ParticipantState, PeerVerifier, RoundParams,
    SecAggError, SharePackage, Signer, UnmaskResponse,
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
    /// `(index, unmasking shares)`.
    pub(crate) responses: Vec<(u16, UnmaskResponse)>,
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
            responses: Vec::new(),
        };
        let mut states = BTreeMap::new();
        for (index, input) in (1..=n as u16).zip(&inputs) {
            let (state, keys) = ExpectDirectory::new(
                params.clone(),
                index,
                input.clone(),
                &consortium.signer(index),
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
        let (_, request) = round.replay_inputs().finish().expect("enough inputs");
        for &index in &request.survivors {
            let response = states
                .get_mut(&index)
                .expect("a survivor was a participant")
                .handle_unmask(&request)
                .expect("unmask request accepted");
            round.responses.push((index, response));
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
    /// unmasking shares: ready to unmask.
    pub(crate) fn unmasking(&self, server: ExpectMaskedInputs) -> ExpectUnmasking {
        let (mut server, _) = server.finish().expect("enough inputs");
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

/// Long-term Ed25519 keys of `n` hospitals; a "certificate" is the raw public key, as in the
/// protocol's own tests.
pub(crate) struct Consortium {
    keys: Vec<Ed25519KeyPair>,
    pub(crate) verifier: KeyVerifier,
}

impl Consortium {
    pub(crate) fn new(n: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut keys = Vec::with_capacity(n);
        let mut public = BTreeMap::new();
        for i in 1..=n {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any seed is a key");
            public.insert(format!("hospital-{i}"), pair.public_key().as_ref().to_vec());
            keys.push(pair);
        }
        Self {
            keys,
            verifier: KeyVerifier(public),
        }
    }

    pub(crate) fn signer(&self, index: u16) -> KeySigner<'_> {
        KeySigner(&self.keys[usize::from(index) - 1])
    }

    pub(crate) fn certificate(&self, index: u16) -> Vec<u8> {
        self.keys[usize::from(index) - 1]
            .public_key()
            .as_ref()
            .to_vec()
    }
}

/// Signs with a hospital's Ed25519 key.
pub(crate) struct KeySigner<'a>(&'a Ed25519KeyPair);

impl Signer for KeySigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(self.0.sign(message).as_ref().to_vec())
    }
}

/// Checks that the "certificate" is the identity's key and that it signed the message.
pub(crate) struct KeyVerifier(BTreeMap<String, Vec<u8>>);

impl PeerVerifier for KeyVerifier {
    fn verify(&self, identity: &str, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.0.get(identity).is_some_and(|key| key == certificate)
            && UnparsedPublicKey::new(&ED25519, certificate)
                .verify(message, signature)
                .is_ok()
    }
}
