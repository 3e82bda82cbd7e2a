//! The node's configuration file (`node.toml`).
//!
//! Relative paths are resolved against the folder holding the configuration file.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use medfed_certs::TlsFiles;
use medfed_protocol::accounting::Accountant;
use medfed_protocol::eval_release::{EvalReleaseError, EvaluationNoise};
use medfed_protocol::evaluation::MAX_EXAMPLE_LOSS;
use medfed_protocol::stats_release::{StatisticsNoise, StatsReleaseError};
use medfed_transport::{PeerAddress, Proxy, TransportMode};
use serde::Deserialize;

use crate::data::{DEFAULT_HOLDOUT_FRACTION, Holdout};
use crate::policy::{NodePolicy, RawPolicy, SiteFigures};
use crate::trainer::ComputeDevice;

/// The whole configuration, as resolved.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The coordinator's UDP address: an IP address or a host name (resolved at every
    /// connection attempt), and a port.
    pub coordinator: PeerAddress,
    /// The name the coordinator's certificate must carry (a SAN): `server_name` as written,
    /// else the coordinator's host name, else (an IP address) `localhost`.
    pub server_name: String,
    /// This node's TLS material and the consortium CA.
    pub tls: TlsFiles,
    /// The hospital's data.
    pub data: DataConfig,
    /// Where training runs.
    pub device: ComputeDevice,
    /// Folder for the node's own records.
    pub state_dir: PathBuf,
    /// How long to keep trying to reach the coordinator before giving up.
    pub reconnect_for: Duration,
    /// How the node reaches the coordinator: QUIC, TCP, or QUIC with a TCP fallback, and the
    /// HTTP proxy TCP goes through.
    pub network: NetworkConfig,
    /// The hospital's differential-privacy policy; `None`: no DP-SGD (the node warns).
    pub privacy: Option<PrivacyConfig>,
    /// What the hospital agrees to release, whatever the coordinator asks (`[policy]`).
    pub policy: NodePolicy,
    /// Test-only fault injection: crash (drop the connection and stop) right after sending a
    /// given message in a given round. Never read from a configuration file.
    pub danger_crash_after: Option<CrashPoint>,
    /// Test-only fault injection: hold one answer back for a while before sending it, as a
    /// slow node would (a straggler). Never read from a configuration file.
    pub danger_stall: Option<StallPoint>,
    /// libtorch's intra-op threads. Tabular models this size train fastest on one thread; more
    /// threads spend their time synchronising.
    pub threads: NonZeroUsize,
}

/// How a node reaches its coordinator (`transport`, `quic_timeout_secs`, `proxy`,
/// `proxy_credentials_file`).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// `auto` (QUIC, then TCP if no QUIC handshake completes in time), `quic` or `tcp`.
    pub transport: TransportMode,
    /// In `auto`, how long a QUIC handshake may take before the node tries TCP.
    pub quic_timeout: Duration,
    /// The HTTP proxy TCP connections go through (`CONNECT`), if any.
    pub proxy: Option<Proxy>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            transport: TransportMode::Auto,
            quic_timeout: Duration::from_secs_f64(default_quic_timeout_secs()),
            proxy: None,
        }
    }
}

fn default_quic_timeout_secs() -> f64 {
    5.0
}

/// The hospital's own privacy budget and DP-SGD settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The ε the node never exceeds over its lifetime (at `delta`).
    pub target_epsilon: f64,
    /// The δ of the (ε, δ) guarantee; keep it well below 1 / (number of patients).
    pub delta: f64,
    /// σ, or `"auto"`: the smallest σ that lets the planned rounds fit the budget.
    pub noise_multiplier: NoiseMultiplier,
    /// Per-patient gradient clipping norm C.
    pub max_grad_norm: f64,
    /// The accountant that composes the node's releases into ε (`accountant = "rdp"`, the
    /// default: Rényi DP, the figure Opacus reports; or `"pld"`: privacy loss distributions, as
    /// Google's dp_accounting, a tighter ε for the same releases). It counts every release,
    /// chooses σ under `noise_multiplier = "auto"`, and is recorded with each ledger entry.
    #[serde(default)]
    pub accountant: Accountant,
    /// Noise on the evaluation counts (`[privacy.evaluation]`); on by default, at
    /// [`DEFAULT_EVALUATION_NOISE`].
    #[serde(default)]
    pub evaluation: EvaluationNoiseConfig,
    /// Noise on the statistics round's figures (`[privacy.statistics]`); on by default, at
    /// [`DEFAULT_STATISTICS_NOISE`].
    #[serde(default)]
    pub statistics: StatisticsNoiseConfig,
    /// Where the training noise is added (`mode = "local"`, the default: this node's own
    /// DP-SGD; or `"distributed"`: the node adds its share of the noise of one global DP-FedSGD
    /// step before secure aggregation masks it, as the task manifest's `distributed_dp` says).
    /// The node joins only a task of its own mode.
    #[serde(default)]
    pub mode: PrivacyMode,
    /// In distributed mode, the most local ε the node accepts (at `delta`): the guarantee of
    /// its own noise share alone, against the other hospitals colluding with the coordinator.
    /// `None` (the default): the local figure is reported but not capped. The central figure is
    /// capped by `target_epsilon`.
    #[serde(default)]
    pub max_local_epsilon: Option<f64>,
}

/// Where a node's training noise is added (`[privacy] mode`): `local` or `distributed`.
pub use medfed_protocol::manifest::PrivacyMode;

/// σ of the statistics' noise when `[privacy.statistics]` does not set one.
///
/// For the demo's schema (5 numeric and 5 categorical columns, Δ = 4) that is a noise multiplier
/// of 2: composed with the demo's DP-SGD at ε = 8 (δ = 1e-5, `noise_multiplier = "auto"`) it
/// costs each hospital about 0.43 of its ε (5 %; the Auto planner raises DP-SGD's σ by about 4 %
/// to make room). On the demo's four hospitals it standardises each numeric feature to within
/// about 0.1 exact standard deviations of the exact mean and 15–25 % of the exact spread (root
/// mean square over draws; `node/tests/demo_statistics.rs`).
pub const DEFAULT_STATISTICS_NOISE: f64 = 8.0;

/// Discrete Gaussian noise on the statistics round's figures, charged to the node's ledger.
///
/// ```toml
/// [privacy.statistics]
/// noise = 8.0    # σ of the integer noise on each count (0: exact statistics, not charged)
/// ```
///
/// See `medfed_protocol::stats_release` for the mechanism and its sensitivity. With `noise = 0`
/// the statistics leave exact, protected by secure aggregation alone, and go into a sum over one
/// set of hospitals only (see `crate::releases`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatisticsNoiseConfig {
    /// σ of the discrete Gaussian added to each count (the sums' and sums of squares' noise is
    /// scaled from it); 0 turns the noise off.
    #[serde(default = "default_statistics_noise")]
    pub noise: f64,
}

impl Default for StatisticsNoiseConfig {
    fn default() -> Self {
        Self {
            noise: DEFAULT_STATISTICS_NOISE,
        }
    }
}

impl StatisticsNoiseConfig {
    /// Exact statistics: no noise, no charge.
    pub fn exact() -> Self {
        Self { noise: 0.0 }
    }

    /// The sampler this setting describes (`None`: exact statistics), or why it cannot be used.
    pub fn noise(&self) -> Result<Option<StatisticsNoise>, StatsReleaseError> {
        if self.noise == 0.0 {
            return Ok(None);
        }
        StatisticsNoise::new(self.noise).map(Some)
    }
}

fn default_statistics_noise() -> f64 {
    DEFAULT_STATISTICS_NOISE
}

/// σ of the evaluation counts' noise when `[privacy.evaluation]` does not set one.
///
/// The same σ as the statistics'. With the demo's three audited attributes (sensitivity √10)
/// one evaluation is the Gaussian mechanism at noise multiplier 2.5: composed with the demo's
/// DP-SGD at ε = 8 (δ = 1e-5), the final evaluation alone costs each hospital about 5 % of its
/// budget, and every evaluation the schedule adds about as much again, so a consortium whose
/// hospitals noise their counts evaluates rarely (`evaluate_every`, or `"final"`) and bins its
/// histograms coarsely (`[task.score_bins]`). Four hospitals' noise on each pooled count then
/// has σ = 16: it hides any one patient, and it swamps the demo's 185 held-out patients (the
/// pooled AUC the coordinator sees is off by about 0.1), while a consortium with thousands of
/// held-out patients per bin barely notices it. A hospital judges its own model quality on its
/// own held-out patients without releasing anything (`medfed-node validation`).
pub const DEFAULT_EVALUATION_NOISE: f64 = 8.0;

/// Discrete Gaussian noise on every evaluation count a node sends, charged to its ledger.
///
/// ```toml
/// [privacy.evaluation]
/// noise = 8.0        # σ of the integer noise on each count (0: exact counts, not charged)
/// loss_clip = 4.0    # optional: each example's log loss is clipped to this (default ≈ 16.1)
/// ```
///
/// See `medfed_protocol::eval_release` for the mechanism and its sensitivity. With `noise = 0`
/// the counts leave exact, protected by secure aggregation alone, and go into sums over one set
/// of hospitals only (see `crate::releases`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationNoiseConfig {
    /// σ of the discrete Gaussian added to each count; 0 turns the noise off.
    #[serde(default = "default_evaluation_noise")]
    pub noise: f64,
    /// The bound each example's log loss is clipped to before the noised loss sum; the noise on
    /// that sum has standard deviation `noise × loss_clip`. Default: the largest loss there is,
    /// [`MAX_EXAMPLE_LOSS`] (nothing is clipped).
    #[serde(default = "default_loss_clip")]
    pub loss_clip: f64,
}

impl Default for EvaluationNoiseConfig {
    fn default() -> Self {
        Self {
            noise: DEFAULT_EVALUATION_NOISE,
            loss_clip: MAX_EXAMPLE_LOSS,
        }
    }
}

impl EvaluationNoiseConfig {
    /// Exact evaluation counts: no noise, no charge.
    pub fn exact() -> Self {
        Self {
            noise: 0.0,
            ..Self::default()
        }
    }

    /// The sampler this setting describes (`None`: exact counts), or why it cannot be used.
    pub fn noise(&self) -> Result<Option<EvaluationNoise>, EvalReleaseError> {
        if self.noise == 0.0 {
            return Ok(None);
        }
        EvaluationNoise::new(self.noise, self.loss_clip).map(Some)
    }
}

fn default_evaluation_noise() -> f64 {
    DEFAULT_EVALUATION_NOISE
}

fn default_loss_clip() -> f64 {
    MAX_EXAMPLE_LOSS
}

/// A fixed noise multiplier, or one chosen from the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseMultiplier {
    /// Chosen so that the coordinator's planned rounds spend exactly the budget (leaving room
    /// for the noised evaluation counts of each round and of the final evaluation, when on).
    Auto,
    /// This σ.
    Fixed(f64),
}

impl<'de> Deserialize<'de> for NoiseMultiplier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(sigma) => Ok(Self::Fixed(sigma)),
            Raw::Text(text) if text == "auto" => Ok(Self::Auto),
            Raw::Text(text) => Err(serde::de::Error::custom(format!(
                "noise_multiplier must be a number or \"auto\", not {text:?}"
            ))),
        }
    }
}

/// Where a node crashes on purpose, for fault-tolerance tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashPoint {
    /// The round.
    pub round: u64,
    /// The kind of message after which to crash (see `Message::kind`).
    pub after: &'static str,
}

/// Which answer a straggling node holds back, and for how long, for fault-tolerance tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallPoint {
    /// The round.
    pub round: u64,
    /// The kind of the answer held back (see `Message::kind`).
    pub before: &'static str,
    /// How long it is held.
    pub hold: Duration,
}

/// Where the data is and how it is split.
///
/// ```toml
/// [data]
/// csv = "patients.csv"
/// schema = "schema.toml"
/// # One of (the first is the default):
/// holdout_fraction = 0.25   # with split_seed = 0: a seeded random fraction
/// holdout = { column = "cohort", values = ["validation", "test"] }   # a split column
/// holdout_csv = "held-out.csv"   # a separate file of held-out patients
/// ```
#[derive(Clone, Debug)]
pub struct DataConfig {
    /// The CSV of patients.
    pub csv: PathBuf,
    /// The schema describing it (the consortium's schema).
    pub schema: PathBuf,
    /// Which patients are held out for evaluation.
    pub holdout: Holdout,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    coordinator: PeerAddress,
    #[serde(default)]
    server_name: Option<String>,
    tls: RawTls,
    data: RawData,
    #[serde(default)]
    device: ComputeDevice,
    state_dir: PathBuf,
    #[serde(default = "default_reconnect_secs")]
    reconnect_for_secs: f64,
    #[serde(default)]
    transport: TransportMode,
    #[serde(default = "default_quic_timeout_secs")]
    quic_timeout_secs: f64,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    proxy_credentials_file: Option<PathBuf>,
    #[serde(default = "default_threads")]
    threads: NonZeroUsize,
    #[serde(default)]
    privacy: Option<PrivacyConfig>,
    #[serde(default)]
    policy: RawPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The consortium CRL: checks the coordinator's certificate and the secure-aggregation
    /// peers' (refused past its nextUpdate unless `allow_expired_crl`).
    #[serde(default)]
    crl: Option<PathBuf>,
    #[serde(default)]
    allow_expired_crl: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    csv: PathBuf,
    schema: PathBuf,
    #[serde(default)]
    holdout_fraction: Option<f64>,
    #[serde(default)]
    split_seed: Option<u64>,
    #[serde(default)]
    holdout: Option<RawHoldoutColumn>,
    #[serde(default)]
    holdout_csv: Option<PathBuf>,
}

/// `[data] holdout = { column = "…", values = ["…"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHoldoutColumn {
    column: String,
    values: Vec<String>,
}

impl RawData {
    /// The held-out choice `[data]` makes: at most one of `holdout`, `holdout_csv` and
    /// `holdout_fraction` (with `split_seed`), the last being the default.
    fn holdout(&self, resolve: impl Fn(PathBuf) -> PathBuf) -> Result<Holdout, NodeConfigError> {
        let invalid = |m: String| Err(NodeConfigError::Invalid(m));
        let named = match (&self.holdout, &self.holdout_csv) {
            (Some(_), Some(_)) => {
                return invalid(
                    "data.holdout and data.holdout_csv are exclusive: name the held-out rows by a split column or by a file, not both".into(),
                );
            }
            (Some(_), None) => Some("data.holdout"),
            (None, Some(_)) => Some("data.holdout_csv"),
            (None, None) => None,
        };
        if let Some(named) = named {
            for (key, set) in [
                ("data.holdout_fraction", self.holdout_fraction.is_some()),
                ("data.split_seed", self.split_seed.is_some()),
            ] {
                if set {
                    return invalid(format!(
                        "{key} and {named} are exclusive: {named} names the held-out rows, a random fraction would choose others"
                    ));
                }
            }
        }
        if let Some(RawHoldoutColumn { column, values }) = &self.holdout {
            let column = column.trim();
            if column.is_empty() {
                return invalid("data.holdout.column must name a column of the CSV".into());
            }
            let values: Vec<String> = values.iter().map(|v| v.trim().to_owned()).collect();
            if values.is_empty() || values.iter().any(String::is_empty) {
                return invalid(format!(
                    "data.holdout.values must list the non-blank values of \"{column}\" that hold a row out"
                ));
            }
            return Ok(Holdout::Column {
                column: column.to_owned(),
                values,
            });
        }
        if let Some(path) = &self.holdout_csv {
            return Ok(Holdout::File(resolve(path.clone())));
        }
        let fraction = self.holdout_fraction.unwrap_or(DEFAULT_HOLDOUT_FRACTION);
        if !(0.0..1.0).contains(&fraction) {
            return invalid("data.holdout_fraction must be in [0, 1)".into());
        }
        Ok(Holdout::Fraction {
            fraction,
            seed: self.split_seed.unwrap_or(0),
        })
    }
}

/// The TLS name expected of a coordinator configured by IP address without `server_name`.
const IP_SERVER_NAME: &str = "localhost";

fn default_reconnect_secs() -> f64 {
    300.0
}
fn default_threads() -> NonZeroUsize {
    NonZeroUsize::MIN
}

impl NodeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path.parent().unwrap_or_else(|| Path::new("."))).map_err(|e| match e {
            NodeConfigError::Syntax { message, .. } => NodeConfigError::Syntax {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// Parses configuration text, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, NodeConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| NodeConfigError::Syntax {
            path: None,
            message: e.to_string(),
        })?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let holdout = raw.data.holdout(resolve)?;
        if let Some(privacy) = &raw.privacy {
            privacy.validate()?;
        }
        let policy = raw
            .policy
            .resolve(resolve)
            .map_err(NodeConfigError::Invalid)?;
        // Distributed DP's central guarantee counts on t hospitals' noise shares in every sum:
        // with membership unpinned, whoever runs the CA could fill a sum with certificates of
        // its own that add none.
        if raw
            .privacy
            .as_ref()
            .is_some_and(|p| p.mode == PrivacyMode::Distributed)
            && policy.members.is_none()
        {
            return Err(NodeConfigError::Invalid(
                "privacy.mode = \"distributed\" needs policy.members: with membership unpinned, certificates the CA mints could fill a sum without adding noise shares".into(),
            ));
        }
        // A noised site figure is the noised vector the node already put into the final
        // evaluation's sum: without evaluation noise there is no such vector.
        let noised_evaluation = raw
            .privacy
            .as_ref()
            .is_some_and(|p| p.evaluation.noise().is_ok_and(|n| n.is_some()));
        if policy.release_site_figures == SiteFigures::Noised && !noised_evaluation {
            return Err(NodeConfigError::Invalid(
                "policy.release_site_figures = \"noised\" needs the evaluation noise on ([privacy] with [privacy.evaluation] noise > 0); set it to \"exact\" to release exact counts, or \"no\"".into(),
            ));
        }
        if !(raw.reconnect_for_secs.is_finite() && raw.reconnect_for_secs >= 0.0) {
            return Err(NodeConfigError::Invalid(
                "reconnect_for_secs must be a non-negative number".into(),
            ));
        }
        if !(raw.quic_timeout_secs.is_finite() && raw.quic_timeout_secs > 0.0) {
            return Err(NodeConfigError::Invalid(
                "quic_timeout_secs must be a positive number".into(),
            ));
        }
        let proxy = match (&raw.proxy, &raw.proxy_credentials_file) {
            (Some(url), credentials) => {
                if raw.transport == TransportMode::Quic {
                    return Err(NodeConfigError::Invalid(
                        "proxy is set but transport = \"quic\": a proxy carries TCP only; use transport = \"tcp\" or \"auto\"".into(),
                    ));
                }
                let credentials = credentials.clone().map(resolve);
                Some(
                    Proxy::new(url, credentials.as_deref())
                        .map_err(|e| NodeConfigError::Invalid(e.to_string()))?,
                )
            }
            (None, Some(_)) => {
                return Err(NodeConfigError::Invalid(
                    "proxy_credentials_file is set but proxy is not".into(),
                ));
            }
            (None, None) => None,
        };
        let server_name = raw.server_name.unwrap_or_else(|| {
            raw.coordinator
                .host_name()
                .unwrap_or(IP_SERVER_NAME)
                .to_owned()
        });
        Ok(Self {
            coordinator: raw.coordinator,
            server_name,
            tls: TlsFiles {
                ca_cert: resolve(raw.tls.ca_cert),
                cert: resolve(raw.tls.cert),
                key: resolve(raw.tls.key),
                crl: raw.tls.crl.map(resolve),
                allow_expired_crl: raw.tls.allow_expired_crl,
            },
            data: DataConfig {
                csv: resolve(raw.data.csv),
                schema: resolve(raw.data.schema),
                holdout,
            },
            device: raw.device,
            state_dir: resolve(raw.state_dir),
            reconnect_for: Duration::from_secs_f64(raw.reconnect_for_secs),
            network: NetworkConfig {
                transport: raw.transport,
                quic_timeout: Duration::from_secs_f64(raw.quic_timeout_secs),
                proxy,
            },
            threads: raw.threads,
            danger_crash_after: None,
            danger_stall: None,
            privacy: raw.privacy,
            policy,
        })
    }
}

impl PrivacyConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        let invalid = |m: &str| Err(NodeConfigError::Invalid(format!("privacy.{m}")));
        if !(self.target_epsilon.is_finite() && self.target_epsilon > 0.0) {
            return invalid("target_epsilon must be a positive number");
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return invalid("delta must be in (0, 1)");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return invalid("max_grad_norm must be a positive number");
        }
        if let NoiseMultiplier::Fixed(sigma) = self.noise_multiplier
            && !(sigma.is_finite() && sigma >= 0.0)
        {
            return invalid("noise_multiplier must be \"auto\" or a non-negative number");
        }
        if let Err(e) = self.evaluation.noise() {
            return Err(NodeConfigError::Invalid(format!(
                "privacy.evaluation: {e} (0 turns the noise off)"
            )));
        }
        if let Err(e) = self.statistics.noise() {
            return Err(NodeConfigError::Invalid(format!(
                "privacy.statistics: {e} (0 turns the noise off)"
            )));
        }
        if let Some(local) = self.max_local_epsilon
            && !(local.is_finite() && local > 0.0)
        {
            return invalid("max_local_epsilon must be a positive number");
        }
        if self.max_local_epsilon.is_some() && self.mode != PrivacyMode::Distributed {
            return invalid("max_local_epsilon applies only with mode = \"distributed\"");
        }
        Ok(())
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML for this format.
    #[error("{}: {message}", path.as_ref().map_or_else(|| "configuration".into(), |p| p.display().to_string()))]
    Syntax {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The parser's message.
        message: String,
    },
    /// A value out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_named_by_host_is_expected_to_present_that_name() {
        let minimal = |coordinator: &str, server_name: &str| {
            format!(
                "coordinator = \"{coordinator}\"\n{server_name}state_dir = \"state\"\n\
                 [tls]\nca_cert = \"ca.pem\"\ncert = \"h1.pem\"\nkey = \"h1.key\"\n\
                 [data]\ncsv = \"h1.csv\"\nschema = \"schema.toml\"\n\
                 [policy]\nmembers = \"members.toml\"\n"
            )
        };
        let parse = |text: String| NodeConfig::parse(&text, Path::new("/site"));
        let named = parse(minimal("Coordinator.Consortium.example:7400", "")).unwrap();
        assert_eq!(
            named.coordinator.to_string(),
            "coordinator.consortium.example:7400"
        );
        assert_eq!(named.server_name, "coordinator.consortium.example");
        let by_ip = parse(minimal("10.1.2.3:7400", "")).unwrap();
        assert_eq!(by_ip.server_name, "localhost");
        let explicit = parse(minimal(
            "coordinator.consortium.example:7400",
            "server_name = \"medfed-coordinator\"\n",
        ))
        .unwrap();
        assert_eq!(explicit.server_name, "medfed-coordinator");
        let error = parse(minimal("coordinator.consortium.example", ""))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("coordinator") && error.contains("has no port"),
            "{error}"
        );
    }

    /// The smallest node configuration: every required key, nothing else.
    const MINIMAL: &str = r#"
coordinator = "127.0.0.1:7400"
state_dir = "state"
[tls]
ca_cert = "ca.pem"
cert = "h1.pem"
key = "h1.key"
[data]
csv = "/data/h1.csv"
schema = "schema.toml"
[policy]
members = "members.toml"
"#;

    #[test]
    fn the_network_keys_choose_a_transport_and_a_proxy_and_refuse_what_cannot_work() {
        let with = |extra: &str| {
            let text = MINIMAL.replacen("state_dir", &format!("{extra}\nstate_dir"), 1);
            NodeConfig::parse(&text, Path::new("/site"))
        };
        let default = with("").unwrap().network;
        assert_eq!(default.transport, TransportMode::Auto);
        assert_eq!(default.quic_timeout, Duration::from_secs(5));
        assert!(default.proxy.is_none());
        let tcp = with("transport = \"tcp\"\nproxy = \"http://proxy.hospital.example:3128\"")
            .unwrap()
            .network;
        assert_eq!(tcp.transport, TransportMode::Tcp);
        assert_eq!(
            tcp.proxy.map(|p| p.to_string()).as_deref(),
            Some("http://proxy.hospital.example:3128")
        );
        for (extra, expected) in [
            (
                "transport = \"quic\"\nproxy = \"http://p:3128\"",
                "a proxy carries TCP only",
            ),
            ("proxy_credentials_file = \"creds\"", "proxy is not"),
            ("quic_timeout_secs = 0", "quic_timeout_secs"),
            ("proxy = \"https://p:3128\"", "only http:// proxies"),
            (
                "proxy = \"http://p:3128\"\nproxy_credentials_file = \"/nonexistent/creds\"",
                "/nonexistent/creds",
            ),
            ("transport = \"udp\"", "transport"),
        ] {
            let error = with(extra).unwrap_err().to_string();
            assert!(error.contains(expected), "{extra}: {error}");
        }
    }

    #[test]
    fn parses_with_defaults_and_resolves_paths() {
        let config = NodeConfig::parse(MINIMAL, Path::new("/site")).unwrap();
        assert_eq!(
            config.policy.members.as_deref(),
            Some(Path::new("/site/members.toml"))
        );
        assert!(config.policy.require_secure_aggregation);
        assert_eq!(config.data.csv, Path::new("/data/h1.csv"));
        assert_eq!(config.data.schema, Path::new("/site/schema.toml"));
        assert_eq!(config.server_name, "localhost");
        assert_eq!(
            config.data.holdout,
            Holdout::Fraction {
                fraction: 0.25,
                seed: 0
            }
        );
        assert_eq!(config.privacy, None);
        assert_eq!(
            (config.tls.crl, config.tls.allow_expired_crl),
            (None, false)
        );
        let with_crl = MINIMAL.replace(
            "[data]",
            "crl = \"crl.pem\"\nallow_expired_crl = true\n[data]",
        );
        let tls = NodeConfig::parse(&with_crl, Path::new("/site"))
            .unwrap()
            .tls;
        assert_eq!(tls.crl.as_deref(), Some(Path::new("/site/crl.pem")));
        assert!(tls.allow_expired_crl);
        let private = format!(
            "{MINIMAL}\n[privacy]\ntarget_epsilon = 8.0\ndelta = 1e-5\nnoise_multiplier = \"auto\"\nmax_grad_norm = 1.0\n"
        );
        let config = NodeConfig::parse(&private, Path::new("/site")).unwrap();
        assert_eq!(
            config.privacy.unwrap().noise_multiplier,
            NoiseMultiplier::Auto
        );
        let fixed = private.replace("\"auto\"", "1.1");
        let config = NodeConfig::parse(&fixed, Path::new("/site")).unwrap();
        let fixed = config.privacy.unwrap();
        assert_eq!(fixed.noise_multiplier, NoiseMultiplier::Fixed(1.1));
        // The evaluation counts and the statistics are noised by default under [privacy].
        assert_eq!(fixed.evaluation, EvaluationNoiseConfig::default());
        assert_eq!(fixed.evaluation.noise, DEFAULT_EVALUATION_NOISE);
        assert!(fixed.evaluation.noise().unwrap().is_some());
        assert_eq!(fixed.statistics.noise, DEFAULT_STATISTICS_NOISE);
        assert!(fixed.statistics.noise().unwrap().is_some());
        let statistics = |extra: &str| {
            NodeConfig::parse(
                &format!("{private}[privacy.statistics]\n{extra}\n"),
                Path::new("/site"),
            )
            .map(|c| c.privacy.unwrap().statistics)
        };
        assert_eq!(statistics("noise = 6.0").unwrap().noise, 6.0);
        assert_eq!(statistics("").unwrap().noise, DEFAULT_STATISTICS_NOISE);
        let exact = statistics("noise = 0").unwrap();
        assert_eq!(exact, StatisticsNoiseConfig::exact());
        assert!(exact.noise().unwrap().is_none());
        for bad in ["noise = -1.0", "noise = 1e6", "sigma = 2.0"] {
            let err = statistics(bad).unwrap_err().to_string();
            assert!(
                err.contains("statistics") || err.contains("sigma"),
                "{bad}: {err}"
            );
        }
        let noised = format!("{private}[privacy.evaluation]\nnoise = 4.0\n");
        let evaluation = NodeConfig::parse(&noised, Path::new("/site"))
            .unwrap()
            .privacy
            .unwrap()
            .evaluation;
        assert_eq!(
            (evaluation.noise, evaluation.loss_clip),
            (4.0, MAX_EXAMPLE_LOSS)
        );
        let exact = format!("{private}[privacy.evaluation]\nnoise = 0\n");
        let evaluation = NodeConfig::parse(&exact, Path::new("/site"))
            .unwrap()
            .privacy
            .unwrap()
            .evaluation;
        assert_eq!(evaluation, EvaluationNoiseConfig::exact());
        assert!(evaluation.noise().unwrap().is_none());
        for bad in [
            "noise = -1.0",
            "noise = 4.0\nloss_clip = -1.0",
            "sigma = 4.0",
        ] {
            let text = format!("{private}[privacy.evaluation]\n{bad}\n");
            assert!(
                NodeConfig::parse(&text, Path::new("/site")).is_err(),
                "{bad}"
            );
        }
        let wrong = private.replace("\"auto\"", "\"lots\"");
        assert!(NodeConfig::parse(&wrong, Path::new("/site")).is_err());
        let bad = MINIMAL.replace("[data]", "[data]\nholdout_fraction = 1.5");
        assert!(matches!(
            NodeConfig::parse(&bad, Path::new(".")),
            Err(NodeConfigError::Invalid(_))
        ));
    }

    #[test]
    fn a_noised_site_figure_needs_the_evaluation_noise_on() {
        let private = "[privacy]\ntarget_epsilon = 8.0\ndelta = 1e-5\nnoise_multiplier = 1.1\nmax_grad_norm = 1.0\n";
        let parse = |mode: &str, privacy: &str| {
            NodeConfig::parse(
                &format!("{MINIMAL}release_site_figures = \"{mode}\"\n{privacy}"),
                Path::new("/site"),
            )
            .map(|c| c.policy.release_site_figures)
        };
        // Evaluation noise is on by default under [privacy].
        assert_eq!(parse("noised", private).unwrap(), SiteFigures::Noised);
        for privacy in ["", &format!("{private}[privacy.evaluation]\nnoise = 0\n")] {
            let error = parse("noised", privacy).unwrap_err().to_string();
            assert!(
                error.contains("policy.release_site_figures") && error.contains("evaluation noise"),
                "{error}"
            );
            // Exact counts are the explicit opt-in that needs no noise.
            assert_eq!(parse("exact", privacy).unwrap(), SiteFigures::Exact);
        }
        assert_eq!(parse("no", "").unwrap(), SiteFigures::No);
    }

    #[test]
    fn the_privacy_mode_defaults_to_local_and_distributed_may_cap_the_local_epsilon() {
        let base = format!(
            "{MINIMAL}[privacy]\ntarget_epsilon = 8.0\ndelta = 1e-5\nnoise_multiplier = 1.0\nmax_grad_norm = 1.0\n"
        );
        let parse = |extra: &str| {
            NodeConfig::parse(&format!("{base}{extra}"), Path::new("/site"))
                .map(|c| c.privacy.unwrap())
        };
        let local = parse("").unwrap();
        assert_eq!(
            (local.mode, local.max_local_epsilon),
            (PrivacyMode::Local, None)
        );
        let distributed = parse("mode = \"distributed\"\nmax_local_epsilon = 40.0\n").unwrap();
        assert_eq!(
            (distributed.mode, distributed.max_local_epsilon),
            (PrivacyMode::Distributed, Some(40.0))
        );
        // Unpinned membership cannot carry distributed DP's central guarantee.
        let unpinned = format!("{base}mode = \"distributed\"\n").replace(
            "[policy]\nmembers = \"members.toml\"",
            "[policy]\ntrust_ca_for_membership = true",
        );
        let error = NodeConfig::parse(&unpinned, Path::new("/site"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("policy.members"), "{error}");
        for bad in [
            "mode = \"central\"\n",
            "mode = \"distributed\"\nmax_local_epsilon = 0.0\n",
            "max_local_epsilon = 40.0\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_names_its_held_out_rows_by_a_fraction_a_split_column_or_a_file_and_only_one() {
        let base = r#"
coordinator = "127.0.0.1:7400"
state_dir = "state"
[tls]
ca_cert = "ca.pem"
cert = "h1.pem"
key = "h1.key"
[policy]
members = "members.toml"
[data]
csv = "site.csv"
schema = "schema.toml"
"#;
        let parse = |extra: &str| {
            NodeConfig::parse(&format!("{base}{extra}\n"), Path::new("/site"))
                .map(|c| c.data.holdout)
        };
        assert_eq!(
            parse("holdout_fraction = 0.1\nsplit_seed = 9").unwrap(),
            Holdout::Fraction {
                fraction: 0.1,
                seed: 9
            }
        );
        assert_eq!(
            parse("holdout = { column = \" cohort \", values = [\"validation\", \" test\"] }")
                .unwrap(),
            Holdout::Column {
                column: "cohort".into(),
                values: vec!["validation".into(), "test".into()],
            }
        );
        assert_eq!(
            parse("holdout_csv = \"held-out.csv\"").unwrap(),
            Holdout::File(PathBuf::from("/site/held-out.csv"))
        );
        // Each refusal names both keys, or the key at fault.
        for (extra, keys) in [
            (
                "holdout_csv = \"h.csv\"\nholdout = { column = \"c\", values = [\"v\"] }",
                &["data.holdout ", "data.holdout_csv"][..],
            ),
            (
                "holdout_fraction = 0.25\nholdout_csv = \"h.csv\"",
                &["data.holdout_fraction", "data.holdout_csv"],
            ),
            (
                "split_seed = 3\nholdout = { column = \"c\", values = [\"v\"] }",
                &["data.split_seed", "data.holdout"],
            ),
            (
                "holdout = { column = \"c\", values = [] }",
                &["data.holdout.values"],
            ),
            (
                "holdout = { column = \"c\", values = [\"v\", \" \"] }",
                &["data.holdout.values"],
            ),
            (
                "holdout = { column = \"\", values = [\"v\"] }",
                &["data.holdout.column"],
            ),
            ("holdout_fraction = 1.0", &["data.holdout_fraction"]),
        ] {
            let err = parse(extra).unwrap_err();
            assert!(matches!(err, NodeConfigError::Invalid(_)), "{extra}: {err}");
            for key in keys {
                assert!(err.to_string().contains(key), "{extra}: {err}");
            }
        }
        // A misspelt key inside holdout is not ignored.
        assert!(parse("holdout = { column = \"c\", value = [\"v\"] }").is_err());
    }
}
