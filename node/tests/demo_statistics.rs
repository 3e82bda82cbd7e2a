//! The statistics round on the demo consortium's data (`data/heart`, the four UCI Heart Disease
//! hospitals, split as `scripts/demo` splits them): what each node clips, and how far the
//! standardisation derived from noised statistics lies from the exact one.
//!
//! The exact standardisation is the pooled mean and population standard deviation of every
//! numeric column over the four training splits, unclipped and unrounded — what the statistics
//! round released before it was noised. The stated tolerance, for every numeric column of the
//! demo at the default noise ([`DEFAULT_STATISTICS_NOISE`]), over [`TRIALS`] independent draws:
//! the mean's root-mean-square error at most [`MEAN_RMS`] of the exact standard deviation (and
//! every draw's within [`MEAN_WORST`]), the standard deviation's at most [`STD_RMS`] of it. It
//! follows from the noise's derived spread (`medfed_protocol::stats_release::decoding_error`:
//! about 0.09–0.11 exact standard deviations for the mean, 0.13–0.21 relative for the standard
//! deviation at σ = 8), against which every draw is also checked: the mean and the variance
//! within five of their derived standard deviations, plus what rounding onto the grid and
//! clipping can move. The variance rather than the standard deviation, because the noise is
//! linear in the former; where the noise nearly cancels a column's variance, the floor (a 32nd
//! of the range) holds the standard deviation up.

use std::path::{Path, PathBuf};

use medfed_node::config::DEFAULT_STATISTICS_NOISE;
use medfed_node::data::load_csv;
use medfed_protocol::schema::{ClipRange, ColumnKind, Schema};
use medfed_protocol::stats::{FederatedSummary, STATS_STEPS, Standardization, stats_contribution};
use medfed_protocol::stats_release::{StatisticsNoise, decoding_error};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const HOSPITALS: [&str; 4] = ["cleveland", "hungary", "switzerland", "va_long_beach"];
/// `scripts/demo`'s split.
const HOLDOUT: f64 = 0.25;
const SPLIT_SEED: u64 = 1;
/// Independent noise draws compared with the exact standardisation.
const TRIALS: u64 = 500;
/// Root-mean-square distance of a noised mean from the exact one, in exact standard deviations.
const MEAN_RMS: f64 = 0.15;
/// Largest distance of a noised mean from the exact one, in exact standard deviations.
const MEAN_WORST: f64 = 0.5;
/// Root-mean-square relative distance of a noised standard deviation from the exact one.
const STD_RMS: f64 = 0.3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the node crate sits in the workspace")
        .to_owned()
}

/// The demo schema, and each hospital's training features (encoded, not standardised).
fn demo() -> (Schema, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(repo().join("config/heart/schema.toml")).unwrap();
    let schema = Schema::parse(&text).unwrap();
    let features = HOSPITALS
        .iter()
        .map(|h| {
            let path = repo().join("data/heart").join(format!("{h}.csv"));
            let data = load_csv(&path, &schema).unwrap_or_else(|e| panic!("{e}"));
            let (train, _) = data.split(HOLDOUT, SPLIT_SEED).unwrap();
            train.examples.features
        })
        .collect();
    (schema, features)
}

/// Each numeric column: its encoded feature, name and range.
fn numeric_columns(schema: &Schema) -> Vec<(usize, String, ClipRange)> {
    let mut feature = 0;
    let mut out = Vec::new();
    for column in schema.columns() {
        if let ColumnKind::Numeric { range } = column.kind() {
            out.push((feature, column.name().to_owned(), *range));
        }
        feature += column.width();
    }
    out
}

/// Pooled mean and population standard deviation of one feature over every hospital's rows,
/// each value passed through `f` first.
fn pooled(features: &[Vec<f32>], width: usize, j: usize, f: impl Fn(f64) -> f64) -> (f64, f64) {
    let xs: Vec<f64> = features
        .iter()
        .flat_map(|rows| rows.chunks_exact(width).map(|r| f(f64::from(r[j]))))
        .collect();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
    (mean, var.sqrt())
}

fn summed(parts: &[Vec<f64>]) -> Vec<f64> {
    (0..parts[0].len())
        .map(|i| parts.iter().map(|p| p[i]).sum())
        .collect()
}

#[test]
fn each_hospital_counts_the_values_it_clips_and_the_exact_statistics_decode_to_the_clipped_data() {
    let (schema, features) = demo();
    let width = schema.num_features();
    let numeric = numeric_columns(&schema);
    let locals: Vec<_> = features
        .iter()
        .map(|rows| stats_contribution(&schema, rows).unwrap())
        .collect();
    let mut clipped_in_all = 0;
    for (rows, local) in features.iter().zip(&locals) {
        for ((j, name, range), counted) in numeric.iter().zip(&local.clipped) {
            assert_eq!(&counted.column, name);
            let values = rows.chunks_exact(width).map(|r| f64::from(r[*j]));
            let below = values.clone().filter(|&x| x < range.low()).count() as u64;
            let above = values.filter(|&x| x > range.high()).count() as u64;
            assert_eq!((counted.below, counted.above), (below, above), "{name}");
            clipped_in_all += below + above;
        }
    }
    // The ranges are clinical, not the data's extremes: a few recorded values lie outside
    // (a resting blood pressure of 0, a cholesterol of 603).
    assert!(
        (1..=5).contains(&clipped_in_all),
        "{clipped_in_all} values clipped"
    );

    let values: Vec<Vec<f64>> = locals.into_iter().map(|l| l.values).collect();
    let summary = FederatedSummary::from_summed_stats(&schema, &summed(&values)).unwrap();
    let n: usize = features.iter().map(|rows| rows.len() / width).sum();
    assert_eq!(summary.n, n as u64);
    for ((j, name, range), decoded) in numeric.iter().zip(&summary.numeric) {
        let clip = |x: f64| x.clamp(range.low(), range.high());
        let (mean, std) = pooled(&features, width, *j, clip);
        let half_step = range.width() / f64::from(STATS_STEPS) / 2.0;
        assert!((decoded.mean - mean).abs() <= half_step, "{name}");
        assert!((decoded.std - std).abs() <= half_step, "{name}");
    }
}

/// One numeric column's exact figures, the noise's derived spread in its decoded mean and
/// variance, and what rounding onto the grid and clipping can move them by.
struct Expected {
    feature: usize,
    name: String,
    mean: f64,
    std: f64,
    mean_sd: f64,
    variance_sd: f64,
    mean_bias: f64,
    variance_bias: f64,
}

#[test]
fn the_standardisation_from_noised_statistics_is_within_the_stated_tolerance_of_the_exact_one() {
    let (schema, features) = demo();
    let width = schema.num_features();
    let exact_values: Vec<Vec<f64>> = features
        .iter()
        .map(|rows| stats_contribution(&schema, rows).unwrap().values)
        .collect();
    let n = features.iter().map(|r| r.len() / width).sum::<usize>() as f64;
    let columns: Vec<Expected> = numeric_columns(&schema)
        .into_iter()
        .map(|(feature, name, range)| {
            let (mean, std) = pooled(&features, width, feature, |x| x);
            let error = decoding_error(
                DEFAULT_STATISTICS_NOISE,
                HOSPITALS.len(),
                (range.low(), range.high()),
                n,
                mean,
                std * std,
            );
            let clip = |x: f64| x.clamp(range.low(), range.high());
            let (clipped_mean, clipped_std) = pooled(&features, width, feature, clip);
            let half_step = range.width() / f64::from(STATS_STEPS) / 2.0;
            // Rounding and clipping move the standard deviation by at most this much.
            let std_bias = (clipped_std - std).abs() + half_step;
            Expected {
                feature,
                name,
                mean,
                std,
                mean_sd: error.mean,
                variance_sd: error.variance,
                mean_bias: (clipped_mean - mean).abs() + half_step,
                variance_bias: std_bias * (2.0 * std + std_bias),
            }
        })
        .collect();
    let noise = StatisticsNoise::new(DEFAULT_STATISTICS_NOISE).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(2024);
    let mut squared = vec![(0.0, 0.0); columns.len()];
    let mut worst = vec![(0.0f64, 0.0f64); columns.len()];
    for _ in 0..TRIALS {
        let noised: Vec<Vec<f64>> = exact_values
            .iter()
            .map(|values| {
                let mut values = values.clone();
                noise.apply(&schema, &mut values, &mut rng).unwrap();
                values
            })
            .collect();
        let st = Standardization::from_summed_stats(&schema, &summed(&noised)).unwrap();
        assert_eq!(st.validate(&schema), Ok(()));
        for (i, c) in columns.iter().enumerate() {
            let (mean, std) = (f64::from(st.mean[c.feature]), f64::from(st.std[c.feature]));
            let name = &c.name;
            assert!(
                (mean - c.mean).abs() <= 5.0 * c.mean_sd + c.mean_bias,
                "{name}: mean {mean}, exact {} (noise sd {})",
                c.mean,
                c.mean_sd
            );
            assert!(
                (std * std - c.std * c.std).abs() <= 5.0 * c.variance_sd + c.variance_bias,
                "{name}: std {std}, exact {} (variance noise sd {})",
                c.std,
                c.variance_sd
            );
            let mean_error = (mean - c.mean).abs() / c.std;
            let std_error = (std / c.std - 1.0).abs();
            assert!(mean_error <= MEAN_WORST, "{name}: mean off by {mean_error}");
            squared[i].0 += mean_error * mean_error;
            squared[i].1 += std_error * std_error;
            worst[i] = (worst[i].0.max(mean_error), worst[i].1.max(std_error));
        }
        // One-hot features are left as they are, noise or not.
        for f in (0..width).filter(|f| columns.iter().all(|c| c.feature != *f)) {
            assert_eq!((st.mean[f], st.std[f]), (0.0, 1.0));
        }
    }
    let trials = TRIALS as f64;
    for (c, (sq, worst)) in columns.iter().zip(squared.iter().zip(&worst)) {
        let (mean_rms, std_rms) = ((sq.0 / trials).sqrt(), (sq.1 / trials).sqrt());
        // Relative to the exact standard deviation: to first order, std moves by half the
        // relative change of var = std².
        let (mean_sd, std_sd) = (c.mean_sd / c.std, c.variance_sd / (2.0 * c.std * c.std));
        eprintln!(
            "{}: exact mean {:.2} std {:.2}; noise sd (derived, first order) mean {mean_sd:.3} \
             std {std_sd:.3}; observed over {TRIALS} draws: rms {mean_rms:.3} / {std_rms:.3}, \
             worst {:.3} / {:.3}",
            c.name, c.mean, c.std, worst.0, worst.1
        );
        assert!(mean_rms <= MEAN_RMS, "{}: mean rms {mean_rms}", c.name);
        assert!(std_rms <= STD_RMS, "{}: std rms {std_rms}", c.name);
    }
}
