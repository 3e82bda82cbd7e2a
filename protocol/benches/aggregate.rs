//! The coordinator's aggregation against the machine's memory bandwidth, run by
//! `cargo bench -p medfed-protocol --bench aggregate`.
//!
//! For 10 nodes' updates of 10^6 parameters it times, per round:
//!
//! - **secure aggregation**: `ExpectShares::finish_into` and then
//!   `ExpectMaskedInputs::handle_input` for every node (the sum buffer is zeroed, then each
//!   input is checked and its 10^6 masked words added into the running sum, wrapping in
//!   Z(2^32)). The round's keys and shares are replayed into a fresh state before each
//!   repetition, and after it the round is unmasked, untimed, and its sum kept for the next
//!   repetition to sum into: the steady state of summing into a buffer already mapped
//!   (`reused`);
//! - the same with `ExpectShares::finish`, which sums into a fresh allocation (`fresh`), paying
//!   the page faults of a new 4 MB vector each round;
//! - **secure aggregation with decoding** (`decode+handle_input`): the path from the bytes the
//!   coordinator receives: each node's input framed as the `SecAggInputChunk` pieces a node
//!   sends (`INPUT_CHUNK_WORDS` words each), each piece read in place from its frame's bytes
//!   (`codec::InputPieceFrame::parse`: the header decoded, the words left where they are) and
//!   added straight from those bytes into the sum (`ExpectMaskedInputs::handle_input_chunk`),
//!   into a reused sum and into a fresh one (`ExpectShares::finish`): the coordinator's own
//!   path, since it drops each round's sum once the round is applied rather than hold it for
//!   the next round;
//! - **plain aggregation**: the coordinator's `sum += values` over round vectors sent as `f32`
//!   (`PlainFigures::add_to` into the round's `f64` sum, zeroed for the first node, as
//!   `RoundSum::add` in the round engine does);
//! - **memory copy**: `copy_from_slice` of the same bytes (each node's update copied into one
//!   destination buffer), the limit an aggregation that reads every update once cannot beat by
//!   much.
//!
//! The last lines printed (`aggregate …`) give GB/s of updates summed (update bytes / time) and
//! the ratio to the copy of the same bytes, from medians over interleaved repetitions, and the
//! mean minor page faults of each secure-aggregation variant's timed part per round. Whether a
//! fresh sum faults depends on the allocator: glibc may serve it from a heap it has kept mapped
//! or from newly mapped pages, depending on what the process allocated and freed before, so the
//! fresh-sum figure varies from run to run. `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072`
//! pins glibc to mapping every allocation of a model's size afresh (and unmapping it when freed),
//! the case the reused sum avoids: fresh sums then fault on every page.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;

use bytes::Bytes;
use medfed_protocol::codec::{InputPieceFrame, frame};
use medfed_protocol::messages::{Message, PlainFigures};
use medfed_protocol::secagg::{ExpectMaskedInputs, INPUT_CHUNK_WORDS, ShareDelivery};

mod support;

use support::RecordedRound;

const NODES: usize = 10;
const PARAMS: usize = 1_000_000;
const REPEATS: usize = 15;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let params = if quick { 10_000 } else { PARAMS };
    let round = RecordedRound::new(NODES, params, false);
    // Each node's pieces, as frame bodies (without the length prefix) the way the coordinator's
    // reader hands them over.
    let frames: Vec<Vec<Bytes>> = round
        .inputs
        .iter()
        .map(|(_, input)| {
            input
                .chunks(INPUT_CHUNK_WORDS)
                .map(|piece| {
                    let f = frame(&Message::SecAggInputChunk(piece)).expect("fits the frame cap");
                    Bytes::from(f).slice(4..)
                })
                .collect()
        })
        .collect();
    let plain: Vec<PlainFigures> = (0..NODES)
        .map(|i| PlainFigures::Single((0..params).map(|j| (i * j) as f32 * 1e-6).collect()))
        .collect();
    let expected = round.coordinator().finish().expect("the round unmasks");

    let [
        fresh_faults,
        reuse_faults,
        decode_faults,
        decode_fresh_faults,
    ] = [(); 4].map(|()| Faults::default());
    // Each node's pieces read in place from their frames and summed, as the coordinator does.
    let sum_pieces = |server: &mut ExpectMaskedInputs| {
        for ((index, _), bodies) in round.inputs.iter().zip(&frames) {
            for body in bodies {
                let Ok(Some(piece)) = InputPieceFrame::parse(body.clone()) else {
                    panic!("a masked input's piece reads");
                };
                server
                    .handle_input_chunk(*index, &piece)
                    .expect("honest input");
            }
        }
    };
    let secagg_fresh = |decode: bool| {
        let server = round.replay_shares();
        let faults = minor_faults();
        let start = Instant::now();
        let (mut server, deliveries) = server.finish().expect("everyone shared");
        if decode {
            sum_pieces(&mut server);
        } else {
            for (index, input) in &round.inputs {
                server.handle_input(*index, input).expect("honest input");
            }
        }
        let t = start.elapsed();
        if decode {
            &decode_fresh_faults
        } else {
            &fresh_faults
        }
        .record(faults);
        black_box((server, deliveries));
        t
    };
    // The previous repetition's unmasked sum, handed to the next as the coordinator does.
    let mut spare = Some(expected.clone());
    let mut reuse = |decode: bool| {
        let server = round.replay_shares();
        let buffer = spare.take().unwrap_or_default();
        let faults = minor_faults();
        let start = Instant::now();
        let (mut server, deliveries) = server.finish_into(buffer).expect("everyone shared");
        if decode {
            sum_pieces(&mut server);
        } else {
            for (index, input) in &round.inputs {
                server.handle_input(*index, input).expect("honest input");
            }
        }
        let t = start.elapsed();
        if decode {
            &decode_faults
        } else {
            &reuse_faults
        }
        .record(faults);
        spare = Some(unmask(&round, server, deliveries, &expected));
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
    let mut dst_plain = vec![0f32; params];
    let mut copy_plain = || {
        let start = Instant::now();
        for values in &plain {
            if let PlainFigures::Single(values) = values {
                dst_plain.copy_from_slice(values);
            }
            black_box(&mut dst_plain);
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
        b.iter_custom(|iters| (0..iters).map(|_| reuse(false)).sum())
    });
    group.bench_function("secagg_handle_input_fresh_sum", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| secagg_fresh(false)).sum())
    });
    group.bench_function("secagg_decode_and_handle_input", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| reuse(true)).sum())
    });
    group.bench_function("copy_u32", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| copy32()).sum())
    });
    group.bench_function("plain_add_into_f32", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| plain_sum()).sum())
    });
    group.bench_function("copy_f32", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| copy_plain()).sum())
    });
    group.finish();
    criterion.final_summary();

    // Interleaved repetitions, so that load from other processes hits every variant alike.
    // Page faults are counted over the same repetitions as the medians.
    for faults in [
        &fresh_faults,
        &reuse_faults,
        &decode_faults,
        &decode_fresh_faults,
    ] {
        faults.reset();
    }
    let mut t = [vec![], vec![], vec![], vec![], vec![], vec![], vec![]];
    for _ in 0..if quick { 1 } else { REPEATS } {
        t[0].push(reuse(false).as_secs_f64());
        t[1].push(secagg_fresh(false).as_secs_f64());
        t[6].push(secagg_fresh(true).as_secs_f64());
        t[2].push(reuse(true).as_secs_f64());
        t[3].push(copy32().as_secs_f64());
        t[4].push(plain_sum().as_secs_f64());
        t[5].push(copy_plain().as_secs_f64());
    }
    let [s, sf, sd, c32, p, c_plain, sdf] = t.map(|mut v| median(&mut v));
    let gb = |bytes: usize, secs: f64| bytes as f64 / secs / 1e9;
    let b32 = NODES * params * 4;
    println!(
        "aggregate secagg {NODES} nodes x {params} words: handle_input {:.2} GB/s reused sum, \
         {:.2} GB/s fresh sum; decode+handle_input {:.2} GB/s reused sum; memcpy {:.2} GB/s; \
         ratio {:.2} handle_input reused, {:.2} handle_input fresh, {:.2} decode+handle_input reused",
        gb(b32, s),
        gb(b32, sf),
        gb(b32, sd),
        gb(b32, c32),
        c32 / s,
        c32 / sf,
        c32 / sd
    );
    println!(
        "aggregate secagg page faults per round (minor, /proc/self/stat): handle_input {} reused \
         sum, {} fresh sum; decode+handle_input {} reused sum",
        reuse_faults, fresh_faults, decode_faults
    );
    println!(
        "aggregate secagg decode+handle_input fresh sum {:.2} GB/s; ratio {:.2}; \
         minor page faults per round {}",
        gb(b32, sdf),
        c32 / sdf,
        decode_fresh_faults
    );
    println!(
        "aggregate plain {NODES} nodes x {params} f32: add_into {:.2} GB/s; memcpy {:.2} GB/s; ratio {:.2}",
        gb(b32, p),
        gb(b32, c_plain),
        c_plain / p
    );
}

/// coordinator/src/training.rs `add_into`: the round's `f64` sum, zeroed for the first node,
/// plus each node's figures.
fn add_into(sum: &mut Vec<f64>, values: &PlainFigures) {
    if sum.is_empty() {
        sum.resize(values.len(), 0.0);
    }
    values.add_to(sum);
}

/// Minor page faults of timed rounds: first touches of freshly mapped memory.
#[derive(Default)]
struct Faults {
    faults: Cell<u64>,
    rounds: Cell<u64>,
}

impl Faults {
    /// Forgets the rounds counted so far.
    fn reset(&self) {
        self.faults.set(0);
        self.rounds.set(0);
    }

    /// Counts one round that started when the process had taken `before` faults.
    fn record(&self, before: Option<u64>) {
        if let (Some(before), Some(after)) = (before, minor_faults()) {
            self.faults.set(self.faults.get() + (after - before));
            self.rounds.set(self.rounds.get() + 1);
        }
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rounds.get() {
            0 => f.write_str("n/a"),
            rounds => write!(f, "{}", self.faults.get() / rounds),
        }
    }
}

/// The process's minor page faults so far (Linux: field 10 of `/proc/self/stat`), if known.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, field 2, is in parentheses and may hold spaces: count from after it.
    let fields = stat.get(stat.rfind(')')? + 1..)?;
    fields.split_whitespace().nth(7)?.parse().ok()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Unmasks `server`, which holds the recorded round's masked inputs, as the coordinator does
/// after phase 3 (untimed: a benchmark of its own in `secagg.rs`), checks the sum and returns it
/// for the next round to sum into.
fn unmask(
    round: &RecordedRound,
    server: ExpectMaskedInputs,
    deliveries: BTreeMap<u16, ShareDelivery>,
    expected: &[u32],
) -> Vec<u32> {
    black_box(deliveries);
    let sum = round.unmasking(server).finish().expect("the round unmasks");
    assert!(sum == expected, "a reused buffer changed the sum");
    sum
}
