//! Who takes part in a secure-aggregation round, who pairs with whom, and how many shares
//! reconstruct a secret.

use ring::digest;
use serde::{Deserialize, Serialize};

use super::SecAggError;
use super::graph::neighbours;

/// One participant: its position (a Shamir x-coordinate, from 1) and its consortium identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Index in the round, from 1; also the x-coordinate of the shares it holds.
    pub index: u16,
    /// The identity in the participant's certificate.
    pub identity: String,
}

/// The public parameters of one secure-aggregation round, chosen by the coordinator and sent to
/// every participant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundParams {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// Everyone asked to take part, indices 1..=n in order.
    pub participants: Vec<Participant>,
    /// Shares needed to reconstruct one participant's secrets; also the fewest participants
    /// with which a phase may go on.
    pub threshold: usize,
    /// Neighbours each participant pairs with (SecAgg+); `None`: everyone pairs with everyone.
    pub neighbours: Option<usize>,
    /// Seed of the neighbour graph (public).
    pub graph_seed: [u8; 32],
    /// Length of the masked vector, in `u32` words.
    pub vector_len: usize,
    /// Digest of the encoding every participant encodes its figures with
    /// ([`VectorEncoding::digest`](super::encoding::VectorEncoding::digest)): each participant
    /// checks it against its own encoding, and through [`RoundParams::digest`] its peers check
    /// that everyone was given the same one (a participant whose figures were scaled otherwise
    /// could be told apart in the sum).
    pub encoding_digest: [u8; 32],
}

/// The most pairings (each participant's neighbours, summed over participants) a round may
/// have: every party holds the whole neighbour graph, so this bounds what a round's parameters
/// can make it allocate. 2^22 allows 2 000 participants pairing with everyone, or tens of
/// thousands with SecAgg+ neighbours.
pub const MAX_PAIRINGS: usize = 1 << 22;

impl RoundParams {
    /// The default threshold for `holders` share holders: ⌊2·holders/3⌋ + 1.
    pub fn default_threshold(holders: usize) -> usize {
        2 * holders / 3 + 1
    }

    /// SHA-256 over a canonical, domain-separated encoding of every field (big-endian integers,
    /// length-prefixed lists and strings, a tag byte for the optional neighbour count). Each
    /// participant signs it into its key advertisement, and its peers compare it with the
    /// digest of their own parameters: all must have been given the same round.
    pub fn digest(&self) -> [u8; 32] {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"medfed-secagg-params-v1");
        context.update(&self.session.to_be_bytes());
        context.update(&self.round.to_be_bytes());
        context.update(&(self.participants.len() as u64).to_be_bytes());
        for participant in &self.participants {
            context.update(&participant.index.to_be_bytes());
            context.update(&(participant.identity.len() as u64).to_be_bytes());
            context.update(participant.identity.as_bytes());
        }
        context.update(&(self.threshold as u64).to_be_bytes());
        match self.neighbours {
            None => context.update(&[0]),
            Some(k) => {
                context.update(&[1]);
                context.update(&(k as u64).to_be_bytes());
            }
        }
        context.update(&self.graph_seed);
        context.update(&(self.vector_len as u64).to_be_bytes());
        context.update(&self.encoding_digest);
        let mut out = [0; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }

    /// Number of participants.
    pub fn n(&self) -> usize {
        self.participants.len()
    }

    /// Checks the parameters: indices are 1..=n in order, identities distinct, and the threshold
    /// is reachable (at least 1, at most the number of holders of each secret).
    pub fn validate(&self) -> Result<(), SecAggError> {
        let n = self.n();
        if n == 0 || n > usize::from(u16::MAX) {
            return Err(SecAggError::BadParams(format!("{n} participants")));
        }
        let mut identities = std::collections::HashSet::with_capacity(n);
        for (position, participant) in self.participants.iter().enumerate() {
            if usize::from(participant.index) != position + 1 {
                return Err(SecAggError::BadParams(format!(
                    "participant {} has index {}, expected {}",
                    participant.identity,
                    participant.index,
                    position + 1
                )));
            }
            if !identities.insert(participant.identity.as_str()) {
                return Err(SecAggError::BadParams(format!(
                    "identity {} appears twice",
                    participant.identity
                )));
            }
        }
        let holders = self.holders_per_secret();
        if n.saturating_mul(holders - 1) > MAX_PAIRINGS {
            return Err(SecAggError::BadParams(format!(
                "{n} participants with {} neighbours each exceed the {MAX_PAIRINGS} pairings a round may have",
                holders - 1
            )));
        }
        if self.threshold < 2 || self.threshold > holders {
            return Err(SecAggError::BadParams(format!(
                "threshold {} is not in 2..={holders} (share holders per secret; secure aggregation needs at least 2 participants)",
                self.threshold
            )));
        }
        if self.vector_len == 0 {
            return Err(SecAggError::BadParams("empty vector".into()));
        }
        Ok(())
    }

    /// Number of holders of each participant's shares: its neighbours and itself.
    pub fn holders_per_secret(&self) -> usize {
        match self.neighbours {
            Some(k) if k + 1 < self.n() => k + 1,
            _ => self.n(),
        }
    }

    /// The neighbour graph: for participant index `i` (from 1), the indices it pairs with.
    pub fn graph(&self) -> Result<Vec<Vec<u16>>, SecAggError> {
        let n = self.n();
        let k = self
            .neighbours
            .unwrap_or_else(|| n.saturating_sub(1))
            .min(n.saturating_sub(1));
        let graph = neighbours(n, k, self.graph_seed)?;
        Ok(graph
            .into_iter()
            .map(|list| list.into_iter().map(|j| j as u16 + 1).collect())
            .collect())
    }

    /// The identity of participant `index`.
    pub fn identity(&self, index: u16) -> Option<&str> {
        self.participants
            .get(usize::from(index).checked_sub(1)?)
            .map(|p| p.identity.as_str())
    }

    /// The index of the participant with `identity`.
    pub fn index_of(&self, identity: &str) -> Option<u16> {
        self.participants
            .iter()
            .find(|p| p.identity == identity)
            .map(|p| p.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: usize, neighbours: Option<usize>) -> RoundParams {
        RoundParams {
            session: 1,
            round: 1,
            participants: (1..=n)
                .map(|i| Participant {
                    index: i as u16,
                    identity: format!("node-{i}"),
                })
                .collect(),
            threshold: 2,
            neighbours,
            graph_seed: [7; 32],
            vector_len: 1,
            encoding_digest: [3; 32],
        }
    }

    #[test]
    fn the_digest_covers_every_field() {
        let base = params(4, None);
        let mut variants: Vec<RoundParams> = Vec::new();
        let mut push = |change: &dyn Fn(&mut RoundParams)| {
            let mut p = base.clone();
            change(&mut p);
            variants.push(p);
        };
        push(&|p| p.session += 1);
        push(&|p| p.round += 1);
        push(&|p| {
            p.participants.pop();
        });
        push(&|p| p.participants[2].identity = "node-9".into());
        push(&|p| p.participants[1].index = 7);
        push(&|p| p.threshold = 3);
        push(&|p| p.neighbours = Some(3));
        push(&|p| p.graph_seed[31] ^= 1);
        push(&|p| p.vector_len = 2);
        push(&|p| p.encoding_digest[0] ^= 1);
        // Length prefixes: moving a byte between two identities changes the digest.
        push(&|p| {
            p.participants[0].identity = "node-1n".into();
            p.participants[1].identity = "ode-2".into();
        });
        let mut digests: Vec<[u8; 32]> = variants.iter().map(RoundParams::digest).collect();
        digests.push(base.digest());
        assert_eq!(base.digest(), base.clone().digest(), "deterministic");
        let distinct: std::collections::HashSet<_> = digests.iter().collect();
        assert_eq!(
            distinct.len(),
            digests.len(),
            "every change changes the digest"
        );
        // Some(k) and None differ even where they describe the same graph.
        let mut everyone = base.clone();
        everyone.neighbours = Some(3);
        assert_eq!(everyone.graph().unwrap(), base.graph().unwrap());
        assert_ne!(everyone.digest(), base.digest());
    }

    /// Found by fuzzing: a round of 65 535 participants pairing with everyone made every party
    /// build a graph of 4.3 × 10^9 pairings (tens of GB) before anything else was checked.
    #[test]
    fn regression_fuzz_a_round_too_large_to_pair_is_refused() {
        let everyone = params(usize::from(u16::MAX), None);
        assert!(
            matches!(everyone.validate(), Err(SecAggError::BadParams(m)) if m.contains("pairings"))
        );
        assert!(params(usize::from(u16::MAX), Some(20)).validate().is_ok());
        assert!(params(2_000, None).validate().is_ok());
    }
}
