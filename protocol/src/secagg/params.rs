//! Who takes part in a secure-aggregation round, who pairs with whom, and how many shares
//! reconstruct a secret.

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
        }
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
