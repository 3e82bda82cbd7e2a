//! Benchmarks of secure aggregation (`medfed_protocol::secagg`), run by
//! `cargo bench -p medfed-protocol`. One run prints three things:
//!
//! 1. **Client masking** for models of 10^5, 10^6 and 10^7 parameters with 10 and 50 peers:
//!    `handle_delivery` (the real state transition: decrypt the peers' shares, copy the input,
//!    add the self-mask and one pairwise mask per peer), the bare masking loop inside it
//!    (`add_mask` for the self-mask, then per peer an X25519 + HKDF seed and `add_mask` or
//!    `subtract_mask`), and beside them the raw ChaCha20 keystream (`crypto::keystream`) over the
//!    same bytes: one `params · 4`-byte buffer filled `peers + 1` times with fresh keys, as the
//!    masks are. `masking …` lines give elements (words) per second and the ratio of masking to
//!    keystream throughput.
//! 2. **Coordinator unmasking**: `ExpectUnmasking::finish` for 10 participants, 10^5 and 10^6
//!    parameters, with no dropout and with one participant dropping after sharing its keys (its
//!    pairwise masks are then recomputed from its reconstructed key). The round is replayed into
//!    a fresh coordinator before each iteration; only `finish` is timed. `unmasking …` lines.
//! 3. **Traffic**: the bytes one node sends per round with secure aggregation — its key
//!    advertisement, share package, masked input, consistency signature and unmask response,
//!    each framed by `codec::frame` as a [`Message`] — against a plain `f32` update of
//!    `4 · params` bytes. `traffic …` lines.
//! 4. **The consistency round's cost** (issue 12): whole honest rounds of 4 nodes × 1 153 words
//!    (the demo's round vector) and 20 nodes × 10^6 words, timed call by call with ECDSA P-256
//!    keys (the certificates' key type). Per node: signing the survivor set plus checking the
//!    `t` signatures of the unmask request, against the rest of the node's secure-aggregation
//!    compute; at the coordinator: checking every survivor's signature, against the rest of its
//!    secure-aggregation compute; each as a ratio. `consistency …` lines. Not included: the
//!    certificate-chain check the nodes' verifier makes for each signature, and the network
//!    round trip the phase adds.
//!
//! The traffic table is printed before the criterion runs, the `masking`, `unmasking` and
//! `consistency` summaries after them. The summaries average every timed iteration but the first (cold) call. Run as a
//! test (`cargo test --benches`), only the smallest sizes are set up and each routine runs once.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use medfed_protocol::codec::frame;
use medfed_protocol::messages::{Contribution, ContributionKind, Message, PlainFigures, RoundKeys};
use medfed_protocol::secagg::crypto::{AgreementKeyPair, add_mask, keystream, subtract_mask};
use medfed_protocol::secagg::{
    ExpectDelivery, ExpectDirectory, ExpectKeys, KeyAdvertisement, KeyDirectory, ParticipantState,
    PeerVerifier, RoundParams, ShareDelivery, pair_info, survivors_signed_bytes,
};

mod support;

use support::{Consortium, ROUND, RecordedRound, SESSION, round_params};

/// Index of the participant whose masking is timed.
const ME: u16 = 1;
/// Seed of that participant's RNG: the same seed gives the same keys, so the peers' shares,
/// encrypted once to its key, open in every freshly rebuilt state.
const ME_RNG_SEED: u64 = 1;
/// Participants in the unmasking and traffic rounds.
const PARTICIPANTS: usize = 10;
/// Words of the demo's round vector under secure aggregation (4 hospitals).
const DEMO_WORDS: usize = 1_153;
/// Keystream throughput assumed only to size criterion's measurement windows.
const ASSUMED_BYTES_PER_SEC: f64 = 1.2e9;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // `cargo bench` passes --bench; without it (cargo test --benches) or with --test or --list,
    // criterion runs each routine at most once, so the large rounds are not worth building.
    let quick = !has("--bench") || has("--test") || has("--list");
    let (model_sizes, peer_counts, unmask_sizes): (&[usize], &[usize], &[usize]) = if quick {
        (&[100_000], &[10], &[100_000])
    } else {
        (
            &[100_000, 1_000_000, 10_000_000],
            &[10, 50],
            &[100_000, 1_000_000],
        )
    };

    print_traffic(unmask_sizes);

    let mut criterion = Criterion::default().configure_from_args();
    let masking = bench_masking(&mut criterion, model_sizes, peer_counts);
    let unmasking = bench_unmasking(&mut criterion, unmask_sizes);
    criterion.final_summary();
    let consistency: Vec<String> = if quick {
        vec![consistency_cost(4, DEMO_WORDS, 1)]
    } else {
        vec![
            consistency_cost(4, DEMO_WORDS, 20),
            consistency_cost(20, 1_000_000, 3),
        ]
    };

    println!();
    for line in masking.iter().chain(&unmasking).chain(&consistency) {
        println!("{line}");
    }
}

// ---- 1. client masking ------------------------------------------------------------------------

/// Times masking for every size and peer count; returns the `masking …` summary lines.
fn bench_masking(criterion: &mut Criterion, sizes: &[usize], peer_counts: &[usize]) -> Vec<String> {
    let mut group = criterion.benchmark_group("masking");
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    let mut summary = Vec::new();
    for &params in sizes {
        for &peers in peer_counts {
            let id = format!("{}x{peers}", label(params));
            let elements = (params * (peers + 1)) as u64;
            let bytes = 4 * elements;
            let samples = if params >= 10_000_000 { 10 } else { 20 };
            group.sample_size(samples);
            group.measurement_time(window(bytes, samples));

            let delivery_time = Tally::default();
            let round = MaskingRound::new(params, peers);
            group.throughput(Throughput::Elements(elements));
            group.bench_function(BenchmarkId::new("handle_delivery", &id), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let state = round.fresh_state();
                        let start = Instant::now();
                        let out = state.handle_delivery(&round.delivery);
                        timed += start.elapsed();
                        black_box(out.expect("an honest delivery is accepted"));
                    }
                    delivery_time.record(iters, timed)
                });
            });
            drop(round);

            let loop_time = Tally::default();
            let mut fixture = MaskLoop::new(params, peers);
            group.bench_function(BenchmarkId::new("mask_loop", &id), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        fixture.run();
                    }
                    loop_time.record(iters, start.elapsed())
                });
            });
            drop(fixture);

            let keystream_time = Tally::default();
            let mut buffer = vec![0u8; 4 * params];
            let seeds: Vec<[u8; 32]> = (0..=peers).map(|i| [i as u8 + 1; 32]).collect();
            group.throughput(Throughput::Bytes(bytes));
            group.bench_function(BenchmarkId::new("keystream", &id), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        for seed in &seeds {
                            keystream(seed, &mut buffer);
                            black_box(&mut buffer);
                        }
                    }
                    keystream_time.record(iters, start.elapsed())
                });
            });
            drop(buffer);

            summary.push(masking_line(
                &id,
                params,
                peers,
                elements,
                [&delivery_time, &loop_time, &keystream_time].map(Tally::mean),
            ));
        }
    }
    group.finish();
    summary
}

/// One `masking …` summary line from the mean times of handle_delivery, the loop and keystream.
fn masking_line(
    id: &str,
    params: usize,
    peers: usize,
    elements: u64,
    [delivery, mask_loop, stream]: [Option<Duration>; 3],
) -> String {
    let (Some(delivery), Some(mask_loop), Some(stream)) = (delivery, mask_loop, stream) else {
        return format!("masking {id}: not measured (filtered out or test mode)");
    };
    let rate = |time: Duration| elements as f64 / time.as_secs_f64();
    format!(
        "masking {} params {peers} peers: handle_delivery {:.0} Melem/s ({:.0} MB/s), \
         mask loop {:.0} Melem/s ({:.0} MB/s); keystream {:.0} MB/s; \
         ratio {:.2} handle_delivery, {:.2} loop",
        label(params),
        rate(delivery) / 1e6,
        4.0 * rate(delivery) / 1e6,
        rate(mask_loop) / 1e6,
        4.0 * rate(mask_loop) / 1e6,
        4.0 * rate(stream) / 1e6,
        stream.as_secs_f64() / delivery.as_secs_f64(),
        stream.as_secs_f64() / mask_loop.as_secs_f64(),
    )
}

/// Participant [`ME`] of a round of `peers + 1` participants (everyone pairs with everyone),
/// with everything it receives before masking — the key directory and its share delivery —
/// recorded once, so that a fresh [`ExpectDelivery`] can be rebuilt before each iteration.
struct MaskingRound {
    params: RoundParams,
    consortium: Consortium,
    input: Vec<u32>,
    directory: KeyDirectory,
    delivery: ShareDelivery,
}

impl MaskingRound {
    fn new(vector_len: usize, peers: usize) -> Self {
        let n = peers + 1;
        let params = round_params(n, vector_len);
        let consortium = Consortium::new(n);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let input: Vec<u32> = (0..vector_len).map(|_| rng.next_u32()).collect();

        let mut server = ExpectKeys::new(params.clone()).expect("valid parameters");
        let (me, keys, mut me_rng) = start_me(&params, &input, &consortium);
        server
            .handle_keys(ME, keys, consortium.certificate(ME))
            .expect("keys accepted");
        let mut others: BTreeMap<u16, ParticipantState> = BTreeMap::new();
        for index in (1..=n as u16).filter(|&i| i != ME) {
            // The peers never mask here: their inputs are zeros from a zeroed allocation, which
            // the OS maps lazily, so 50 peers' 10^7 words cost no memory until dropped (then
            // one peer's at a time, as each is wiped).
            let (state, keys) = ExpectDirectory::new(
                params.clone(),
                index,
                vec![0; vector_len],
                consortium.signer(index),
                &mut rng,
            )
            .expect("peer starts");
            server
                .handle_keys(index, keys, consortium.certificate(index))
                .expect("keys accepted");
            others.insert(index, ParticipantState::Directory(state));
        }
        let (mut server, directory) = server.finish().expect("everyone advertised");
        let (_, package) = me
            .handle_directory(&directory, &consortium.verifier, &mut me_rng)
            .expect("directory accepted");
        server.handle_package(ME, package).expect("shares accepted");
        for (&index, state) in &mut others {
            let package = state
                .handle_directory(&directory, &consortium.verifier, &mut rng)
                .expect("directory accepted");
            server
                .handle_package(index, package)
                .expect("shares accepted");
        }
        let (_, mut deliveries) = server.finish().expect("everyone shared");
        let delivery = deliveries.remove(&ME).expect("a delivery for every sharer");
        Self {
            params,
            consortium,
            input,
            directory,
            delivery,
        }
    }

    /// The participant as it stands when the delivery arrives, rebuilt with the same keys.
    fn fresh_state(&self) -> ExpectDelivery {
        let (state, _, mut rng) = start_me(&self.params, &self.input, &self.consortium);
        let (state, _) = state
            .handle_directory(&self.directory, &self.consortium.verifier, &mut rng)
            .expect("the same keys are advertised each time");
        state
    }
}

/// Starts participant [`ME`] with its fixed RNG seed; returns the RNG to go on with.
fn start_me(
    params: &RoundParams,
    input: &[u32],
    consortium: &Consortium,
) -> (ExpectDirectory, KeyAdvertisement, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(ME_RNG_SEED);
    let (state, keys) = ExpectDirectory::new(
        params.clone(),
        ME,
        input.to_vec(),
        consortium.signer(ME),
        &mut rng,
    )
    .expect("participant starts");
    (state, keys, rng)
}

/// The masking loop of `handle_delivery` on its own: the self-mask, then for each peer an
/// X25519 agreement and HKDF to the pair's seed and its mask, added or subtracted by index.
struct MaskLoop {
    values: Vec<u32>,
    self_mask: [u8; 32],
    mask_keys: AgreementKeyPair,
    /// `(index, mask public key)` of each peer.
    peers: Vec<(u16, [u8; 32])>,
}

impl MaskLoop {
    fn new(vector_len: usize, peers: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let values = (0..vector_len).map(|_| rng.next_u32()).collect();
        let mut self_mask = [0u8; 32];
        rng.fill_bytes(&mut self_mask);
        let mask_keys = AgreementKeyPair::generate(&mut rng);
        let peers = (1..=peers as u16)
            .map(|i| (ME + i, AgreementKeyPair::generate(&mut rng).public()))
            .collect();
        Self {
            values,
            self_mask,
            mask_keys,
            peers,
        }
    }

    fn run(&mut self) {
        add_mask(&self.self_mask, &mut self.values);
        for &(peer, public) in &self.peers {
            let seed = self
                .mask_keys
                .derive(&public, &pair_info(SESSION, ROUND, ME, peer))
                .expect("peer keys are honest X25519 points");
            if ME < peer {
                add_mask(&seed, &mut self.values);
            } else {
                subtract_mask(&seed, &mut self.values);
            }
        }
        black_box(&mut self.values);
    }
}

// ---- 2. coordinator unmasking -----------------------------------------------------------------

/// Times `ExpectUnmasking::finish`; returns the `unmasking …` summary lines.
fn bench_unmasking(criterion: &mut Criterion, sizes: &[usize]) -> Vec<String> {
    let mut group = criterion.benchmark_group("unmasking");
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    let mut summary = Vec::new();
    for &params in sizes {
        for dropouts in [0usize, 1] {
            let round = RecordedRound::new(PARTICIPANTS, params, dropouts == 1);
            // Every survivor's self-mask is removed; a dropout's pairwise masks are recomputed.
            let masks = (PARTICIPANTS - dropouts) + dropouts * (PARTICIPANTS - 1);
            group.measurement_time(window(4 * (params * masks) as u64, 10));
            let id = format!("{}x{PARTICIPANTS} {dropouts} dropout", label(params));
            let time = Tally::default();
            group.bench_function(BenchmarkId::new("finish", &id), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let server = round.coordinator();
                        let start = Instant::now();
                        let sum = server.finish();
                        timed += start.elapsed();
                        black_box(sum.expect("an honest round unmasks"));
                    }
                    time.record(iters, timed)
                });
            });
            summary.push(match time.mean() {
                Some(mean) => format!(
                    "unmasking {} params {PARTICIPANTS} participants {dropouts} dropout: \
                     finish {:.1} ms",
                    label(params),
                    mean.as_secs_f64() * 1e3
                ),
                None => format!("unmasking {id}: not measured (filtered out or test mode)"),
            });
        }
    }
    group.finish();
    summary
}

// ---- 3. traffic -------------------------------------------------------------------------------

/// Prints the `traffic …` table: bytes participant 1 sends in an honest round, as frames.
fn print_traffic(sizes: &[usize]) {
    println!(
        "secagg traffic per node per round, {PARTICIPANTS} participants, no dropout \
         (whole frames: 4-byte length, bincode body)"
    );
    for &params in sizes {
        let round = RecordedRound::new(PARTICIPANTS, params, false);
        let advertisement = frame_len(Message::SecAggKeys(RoundKeys {
            keys: round.keys[0].1.clone(),
            privacy: None,
        }));
        let package = frame_len(Message::SecAggShares(round.packages[0].1.clone()));
        let input = frame_len(Message::SecAggInput(round.inputs[0].1.clone()));
        let signature = frame_len(Message::SecAggSignature(round.signatures[0].1.clone()));
        let response = frame_len(Message::SecAggUnmaskShares(round.responses[0].1.clone()));
        let total = advertisement + package + input + signature + response;
        let plain = 4 * params;
        let contribution = frame_len(Message::Contribution(Contribution {
            session: SESSION,
            round: ROUND,
            kind: ContributionKind::Round,
            values: PlainFigures::Single(vec![0.5; params]),
            privacy: None,
        }));
        println!(
            "traffic {} params {PARTICIPANTS} participants: key advertisement {advertisement} B, \
             share package {package} B, masked input {input} B, consistency signature \
             {signature} B, unmask response {response} B, total {total} B; plain f32 {plain} B; \
             ratio {:.3} \
             (plain Contribution frame: {contribution} B)",
            label(params),
            total as f64 / plain as f64,
        );
    }
}

/// Length of `message` framed as the nodes send it.
fn frame_len(message: Message) -> usize {
    frame(&message)
        .expect("benchmark messages fit under the frame cap")
        .len()
}

// ---- 4. the consistency round's cost ----------------------------------------------------------

/// Runs `reps` honest rounds of `n` participants over `words`-word inputs, timing every call,
/// and returns the `consistency …` line: the consistency round's compute per node and at the
/// coordinator, next to the rest of the round's secure-aggregation compute, as ratios.
fn consistency_cost(n: usize, words: usize, reps: usize) -> String {
    let mut node = Split::default();
    let mut coordinator = Split::default();
    let mut threshold = 0;
    for rep in 0..reps {
        let params = round_params(n, words);
        threshold = params.threshold;
        let consortium = Consortium::ecdsa(n);
        let mut rng = ChaCha20Rng::seed_from_u64(rep as u64);
        let inputs: Vec<Vec<u32>> = (0..n)
            .map(|_| (0..words).map(|_| rng.next_u32()).collect())
            .collect();
        let indices = 1..=n as u16;

        let mut server = coordinator.rest(|| ExpectKeys::new(params.clone()).unwrap());
        let mut states = BTreeMap::new();
        for (index, input) in indices.clone().zip(&inputs) {
            let (state, keys) = node.rest(|| {
                ExpectDirectory::new(
                    params.clone(),
                    index,
                    input.clone(),
                    consortium.signer(index),
                    &mut rng,
                )
                .unwrap()
            });
            let certificate = consortium.certificate(index);
            coordinator.rest(|| server.handle_keys(index, keys, certificate).unwrap());
            states.insert(index, ParticipantState::Directory(state));
        }
        let (mut server, directory) = coordinator.rest(|| server.finish().unwrap());
        for (&index, state) in &mut states {
            let package = node.rest(|| {
                state
                    .handle_directory(&directory, &consortium.verifier, &mut rng)
                    .unwrap()
            });
            coordinator.rest(|| server.handle_package(index, package).unwrap());
        }
        let (mut server, deliveries) = coordinator.rest(|| server.finish().unwrap());
        for (&index, state) in &mut states {
            let input = node.rest(|| state.handle_delivery(&deliveries[&index]).unwrap());
            coordinator.rest(|| server.handle_input(index, &input).unwrap());
        }
        let (mut server, request) = coordinator.consistency(|| server.finish().unwrap());
        for (&index, state) in &mut states {
            let signature = node.consistency(|| {
                state
                    .handle_consistency(&request, consortium.signer(index), &mut |_| Ok(()))
                    .unwrap()
            });
            coordinator.consistency(|| {
                server
                    .handle_signature(index, signature, &consortium.verifier)
                    .unwrap()
            });
        }
        let (mut server, unmask) = coordinator.consistency(|| server.finish().unwrap());
        // `handle_unmask` checks the request's signatures before it reveals anything: that
        // part is timed apart, as the same verifier calls on the same bytes, and moved from the
        // rest of the round to the consistency round.
        let survivors = unmask.survivors.iter().copied().collect();
        let signed = survivors_signed_bytes(&params.digest(), &survivors);
        for (&index, state) in &mut states {
            let start = Instant::now();
            for (signer, signature) in &unmask.signatures {
                let identity = format!("hospital-{signer}");
                let certificate = consortium.certificate(*signer);
                assert!(
                    consortium
                        .verifier
                        .verify(&identity, &certificate, &signed, signature)
                );
            }
            let checks = start.elapsed();
            let response = node.rest(|| {
                state
                    .handle_unmask(&unmask, &consortium.verifier, &mut |_| Ok(()))
                    .unwrap()
            });
            node.move_to_consistency(checks);
            coordinator.rest(|| server.handle_response(index, response).unwrap());
        }
        let sum = coordinator.rest(|| server.finish().unwrap());
        let mut expected = vec![0u32; words];
        for input in &inputs {
            for (e, v) in expected.iter_mut().zip(input) {
                *e = e.wrapping_add(*v);
            }
        }
        assert!(sum == expected, "the unmasked sum is not the inputs' sum");
    }
    let per_node = (n * reps) as u32;
    let ms = |time: Duration| time.as_secs_f64() * 1e3;
    format!(
        "consistency {n} nodes x {} words (ECDSA P-256, t = {threshold}, {reps} rounds): \
         per node sign + {threshold} signature checks {:.3} ms vs the rest of its \
         secure-aggregation compute {:.3} ms, ratio {:.3}; coordinator {n} signature checks \
         {:.3} ms vs the rest {:.3} ms, ratio {:.3}",
        label(words),
        ms(node.consistency / per_node),
        ms(node.rest / per_node),
        node.ratio(),
        ms(coordinator.consistency / reps as u32),
        ms(coordinator.rest / reps as u32),
        coordinator.ratio(),
    )
}

/// Compute time split between the consistency round and the rest of the round.
#[derive(Default)]
struct Split {
    consistency: Duration,
    rest: Duration,
}

impl Split {
    /// Runs `f`, counting its time to the rest of the round.
    fn rest<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.rest += start.elapsed();
        out
    }

    /// Runs `f`, counting its time to the consistency round.
    fn consistency<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.consistency += start.elapsed();
        out
    }

    /// Moves `time`, counted to the rest of the round, to the consistency round.
    fn move_to_consistency(&mut self, time: Duration) {
        let time = time.min(self.rest);
        self.rest -= time;
        self.consistency += time;
    }

    /// The consistency round's time over the rest's.
    fn ratio(&self) -> f64 {
        self.consistency.as_secs_f64() / self.rest.as_secs_f64()
    }
}

// ---- shared fixtures --------------------------------------------------------------------------

/// Iterations and time a benchmark's routine was timed for, less its first (cold) call.
#[derive(Default)]
struct Tally {
    calls: Cell<u32>,
    iters: Cell<u64>,
    time: Cell<Duration>,
}

impl Tally {
    /// Counts one `iter_custom` call and hands its time back to criterion.
    fn record(&self, iters: u64, time: Duration) -> Duration {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() > 1 {
            self.iters.set(self.iters.get() + iters);
            self.time.set(self.time.get() + time);
        }
        time
    }

    /// Mean time per iteration, if any iteration was counted.
    fn mean(&self) -> Option<Duration> {
        let iters = u32::try_from(self.iters.get()).ok().filter(|&i| i > 0)?;
        Some(self.time.get() / iters)
    }
}

/// A measurement window for `samples` samples of a routine that streams `bytes` of keystream.
fn window(bytes: u64, samples: usize) -> Duration {
    let estimate = bytes as f64 / ASSUMED_BYTES_PER_SEC;
    Duration::from_secs_f64((1.2 * estimate * samples as f64).max(2.0))
}

/// `1e5` for 100 000, and so on; other sizes as they are.
fn label(n: usize) -> String {
    let mut exponent = 0;
    let mut rest = n;
    while rest >= 10 && rest.is_multiple_of(10) {
        rest /= 10;
        exponent += 1;
    }
    if rest == 1 {
        format!("1e{exponent}")
    } else {
        n.to_string()
    }
}
