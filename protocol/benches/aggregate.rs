//! The coordinator's aggregation against the machine's memory bandwidth, run by
//! `cargo bench -p medfed-protocol --bench aggregate`.
//!
//! For 10 nodes' updates of 10^6 parameters it times, per round:
//!
//! - **secure aggregation**: `ExpectMaskedInputs::handle_input` for every node, the coordinator's
//!   actual code path (it checks the input and adds its 10^6 masked words into the running sum,
//!   wrapping in Z(2^32)), after the round's keys and shares are replayed into a fresh state;
//! - **secure aggregation with decoding**: the same after `codec::decode_body` of each node's
//!   framed `SecAggInput` message, as the coordinator receives it;
//! - **plain aggregation**: the coordinator's `sum += values` over `f64` contributions
//!   (`add_into` in coordinator/src/training.rs, reproduced here because it is private);
//! - **memory copy**: `copy_from_slice` of the same bytes (each node's update copied into one
//!   destination buffer), the limit an aggregation that reads every update once cannot beat by
//!   much.
//!
//! The last lines printed (`aggregate …`) give GB/s of updates summed (update bytes / time) and
//! the ratio to the copy of the same bytes, from medians over interleaved repetitions.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use medfed_protocol::codec::{decode_body, frame};
use medfed_protocol::messages::Message;
use medfed_protocol::secagg::{
    ExpectDirectory, ExpectKeys, ExpectMaskedInputs, KeyAdvertisement, MaskedInput, Participant,
    ParticipantState, RoundParams, SharePackage,
};

mod support;

use support::Consortium;

const NODES: usize = 10;
const PARAMS: usize = 1_000_000;
const REPEATS: usize = 15;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let params = if quick { 10_000 } else { PARAMS };
    let round = Round::new(NODES, params);
    let frames: Vec<Vec<u8>> = round
        .inputs
        .iter()
        .map(|(_, input)| {
            let mut f = frame(&Message::SecAggInput(input.clone())).expect("fits the frame cap");
            f.drain(..4);
            f
        })
        .collect();
    let plain: Vec<Vec<f64>> = (0..NODES)
        .map(|i| (0..params).map(|j| (i * j) as f64 * 1e-6).collect())
        .collect();

    let secagg = || {
        let mut server = round.fresh();
        let start = Instant::now();
        for (index, input) in &round.inputs {
            server.handle_input(*index, input).expect("honest input");
        }
        let t = start.elapsed();
        black_box(server);
        t
    };
    let secagg_decode = || {
        let mut server = round.fresh();
        let start = Instant::now();
        for ((index, _), body) in round.inputs.iter().zip(&frames) {
            let Ok(Message::SecAggInput(input)) = decode_body(body) else {
                panic!("a masked input decodes");
            };
            server.handle_input(*index, &input).expect("honest input");
        }
        let t = start.elapsed();
        black_box(server);
        t
    };
    let mut sum: Vec<f64> = Vec::new();
    let mut plain_sum = || {
        sum.clear();
        let start = Instant::now();
        for values in &plain {
            add_into(&mut sum, values);
        }
        let t = start.elapsed();
        black_box(&sum);
        t
    };
    let mut dst32 = vec![0u32; params];
    let mut copy32 = || {
        let start = Instant::now();
        for (_, input) in &round.inputs {
            dst32.copy_from_slice(&input.values);
            black_box(&mut dst32);
        }
        start.elapsed()
    };
    let mut dst64 = vec![0f64; params];
    let mut copy64 = || {
        let start = Instant::now();
        for values in &plain {
            dst64.copy_from_slice(values);
            black_box(&mut dst64);
        }
        start.elapsed()
    };

    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = criterion.benchmark_group("aggregate");
    group.throughput(criterion::Throughput::Bytes((NODES * params * 4) as u64));
    group.bench_function("secagg_handle_input", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| secagg()).sum())
    });
    group.bench_function("secagg_decode_and_handle_input", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| secagg_decode()).sum())
    });
    group.bench_function("copy_u32", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| copy32()).sum())
    });
    group.throughput(criterion::Throughput::Bytes((NODES * params * 8) as u64));
    group.bench_function("plain_add_into_f64", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| plain_sum()).sum())
    });
    group.bench_function("copy_f64", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| copy64()).sum())
    });
    group.finish();
    criterion.final_summary();

    // Interleaved repetitions, so that load from other processes hits every variant alike.
    let mut t = [vec![], vec![], vec![], vec![], vec![]];
    for _ in 0..if quick { 1 } else { REPEATS } {
        t[0].push(secagg().as_secs_f64());
        t[1].push(secagg_decode().as_secs_f64());
        t[2].push(copy32().as_secs_f64());
        t[3].push(plain_sum().as_secs_f64());
        t[4].push(copy64().as_secs_f64());
    }
    let [s, sd, c32, p, c64] = t.map(|mut v| median(&mut v));
    let gb = |bytes: usize, secs: f64| bytes as f64 / secs / 1e9;
    let b32 = NODES * params * 4;
    let b64 = NODES * params * 8;
    println!(
        "aggregate secagg {NODES} nodes x {params} words: handle_input {:.2} GB/s; \
         decode+handle_input {:.2} GB/s; memcpy {:.2} GB/s; ratio {:.2} handle_input, {:.2} decode+handle_input",
        gb(b32, s),
        gb(b32, sd),
        gb(b32, c32),
        c32 / s,
        c32 / sd
    );
    println!(
        "aggregate plain {NODES} nodes x {params} f64: add_into {:.2} GB/s; memcpy {:.2} GB/s; ratio {:.2}",
        gb(b64, p),
        gb(b64, c64),
        c64 / p
    );
}

/// coordinator/src/training.rs `add_into`: element-wise `sum += values`, from an empty sum.
fn add_into(sum: &mut Vec<f64>, values: &[f64]) {
    if sum.is_empty() {
        sum.extend_from_slice(values);
    } else {
        for (s, v) in sum.iter_mut().zip(values) {
            *s += v;
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One honest round recorded up to the masked inputs, so that a fresh coordinator in phase 3
/// (`ExpectMaskedInputs`) can be rebuilt before each repetition.
struct Round {
    params: RoundParams,
    keys: Vec<(u16, KeyAdvertisement, Vec<u8>)>,
    packages: Vec<(u16, SharePackage)>,
    inputs: Vec<(u16, MaskedInput)>,
}

impl Round {
    fn new(n: usize, vector_len: usize) -> Self {
        let participants = (1..=n)
            .map(|i| Participant {
                index: i as u16,
                identity: format!("hospital-{i}"),
            })
            .collect();
        let mut params = RoundParams {
            session: 77,
            round: 3,
            participants,
            threshold: 0,
            neighbours: None,
            graph_seed: [9; 32],
            vector_len,
        };
        params.threshold = RoundParams::default_threshold(params.holders_per_secret());
        let consortium = Consortium::new(n);
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut round = Self {
            params: params.clone(),
            keys: Vec::new(),
            packages: Vec::new(),
            inputs: Vec::new(),
        };
        let mut states = BTreeMap::new();
        for index in 1..=n as u16 {
            let input: Vec<u32> = (0..vector_len).map(|_| rng.next_u32()).collect();
            let (state, keys) = ExpectDirectory::new(
                params.clone(),
                index,
                input,
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
        let (_, deliveries) = round.shares().finish().expect("everyone shared");
        for (&index, state) in &mut states {
            let input = state
                .handle_delivery(&deliveries[&index])
                .expect("delivery accepted");
            round.inputs.push((index, input));
        }
        round
    }

    fn shares(&self) -> medfed_protocol::secagg::ExpectShares {
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

    /// A fresh coordinator in phase 3, before any masked input.
    fn fresh(&self) -> ExpectMaskedInputs {
        self.shares().finish().expect("everyone shared").0
    }
}
