//! `medfed-node status`: where a hospital stands, read from its state folder alone — its privacy
//! budget, the rounds it contributed figures to, when it last sent anything and everything it
//! sent in all. The journals are append-only and read without the state lock, so this works
//! while the node runs.

use std::fmt;
use std::path::PathBuf;

use medfed_protocol::accounting::Accountant;
use serde::Serialize;

use crate::config::NodeConfig;
use crate::egress::{EgressError, EgressLog, EgressTotals, rounds_contributed};
use crate::ledger::{LedgerError, PrivacyLedger, epsilon_of};

/// A hospital's standing, as `medfed-node status` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeStatus {
    /// The state folder read.
    pub state_dir: PathBuf,
    /// The privacy budget; `None` when the node has no `[privacy]` (training is not
    /// differentially private).
    pub budget: Option<Budget>,
    /// Rounds (from 1) to which the node sent figures, over the whole egress log.
    pub rounds_contributed: u64,
    /// The last of them.
    pub last_round_contributed: Option<u64>,
    /// When the node last sent anything to the coordinator, Unix milliseconds.
    pub last_sent_ms: Option<i64>,
    /// Messages sent, in all.
    pub messages_sent: u64,
    /// Bytes sent, in all.
    pub bytes_sent: u64,
}

/// The privacy budget: spent and left, at the node's δ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Budget {
    /// ε spent over every ledger entry, composed.
    pub spent_epsilon: f64,
    /// The node's lifetime ε.
    pub target_epsilon: f64,
    /// `target − spent`, never below 0.
    pub left_epsilon: f64,
    /// The δ of both.
    pub delta: f64,
    /// The accountant that composed them.
    pub accountant: Accountant,
    /// Ledger entries (releases charged).
    pub releases: usize,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The egress log.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// The privacy ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl NodeStatus {
    /// Reads the status of the node configured by `config` from its state folder.
    pub fn read(config: &NodeConfig) -> Result<Self, StatusError> {
        let egress = EgressLog::read(&config.state_dir)?;
        let totals = EgressTotals::of(&egress);
        let rounds = rounds_contributed(&egress, i64::MIN);
        let budget = match &config.privacy {
            Some(policy) => {
                let entries = PrivacyLedger::read(&config.state_dir)?;
                let spent = epsilon_of(&entries, &[], policy.accountant, policy.delta)?;
                Some(Budget {
                    spent_epsilon: spent,
                    target_epsilon: policy.target_epsilon,
                    left_epsilon: (policy.target_epsilon - spent).max(0.0),
                    delta: policy.delta,
                    accountant: policy.accountant,
                    releases: entries.len(),
                })
            }
            None => None,
        };
        Ok(Self {
            state_dir: config.state_dir.clone(),
            budget,
            rounds_contributed: rounds.len() as u64,
            last_round_contributed: rounds.last().copied(),
            last_sent_ms: egress.iter().map(|e| e.time_ms).max(),
            messages_sent: totals.messages,
            bytes_sent: totals.bytes,
        })
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "state folder:        {}", self.state_dir.display())?;
        match &self.budget {
            Some(b) => writeln!(
                f,
                "privacy budget:      ε {:.4} spent of {} at δ = {} ({:.4} left; {} releases charged, {} accountant)",
                b.spent_epsilon,
                b.target_epsilon,
                b.delta,
                b.left_epsilon,
                b.releases,
                b.accountant
            )?,
            None => writeln!(
                f,
                "privacy budget:      none ([privacy] is not set: training is not differentially private)"
            )?,
        }
        match self.last_round_contributed {
            Some(last) => writeln!(
                f,
                "rounds contributed:  {} (the last: round {last})",
                self.rounds_contributed
            )?,
            None => writeln!(f, "rounds contributed:  none")?,
        }
        match self.last_sent_ms {
            Some(ms) => writeln!(f, "last sent:           {ms} (Unix ms)")?,
            None => writeln!(f, "last sent:           never")?,
        }
        write!(
            f,
            "sent in all:         {} messages, {} bytes (medfed-node egress lists each)",
            self.messages_sent, self.bytes_sent
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untouched_state_folder_has_sent_nothing_and_spent_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "coordinator = \"127.0.0.1:7400\"\nstate_dir = {:?}\n[tls]\nca_cert = \"ca.pem\"\n\
             cert = \"n.pem\"\nkey = \"n.key\"\n[data]\ncsv = \"n.csv\"\nschema = \"s.toml\"\n\
             [policy]\nmembers = \"m.toml\"\n[privacy]\ntarget_epsilon = 4.0\ndelta = 1e-5\n\
             noise_multiplier = 1.0\nmax_grad_norm = 1.0\n",
            dir.path().display().to_string()
        );
        let config = NodeConfig::parse(&text, dir.path()).unwrap();
        let status = NodeStatus::read(&config).unwrap();
        assert_eq!(status.rounds_contributed, 0);
        assert_eq!(status.last_sent_ms, None);
        let budget = status.budget.as_ref().unwrap();
        assert_eq!((budget.spent_epsilon, budget.left_epsilon), (0.0, 4.0));
        let text = status.to_string();
        assert!(text.contains("rounds contributed:  none"), "{text}");
        assert!(text.contains("last sent:           never"), "{text}");
    }
}
