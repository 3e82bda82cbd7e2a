//! `medfed-load`: runs N light nodes (default 100) through secure-aggregation (SecAgg+) rounds
//! against one real `medfed-coordinator` process on 127.0.0.1, and prints each round's time,
//! the coordinator's peak memory and CPU time, the harness's own, and the bytes each node sent.
//!
//! The nodes share this process as tokio tasks, each with its own certificate and QUIC
//! connection, and use [`medfed_e2e::load::LightTrainer`]: the figures measure the protocol and
//! the coordinator, not training. Run it through `scripts/load`, which builds both binaries in
//! release mode.
//!
//! ```text
//! medfed-load [--nodes 100] [--params 100000] [--rounds 3] [--neighbours 20|all]
//!             [--threshold T] [--rows 40] [--min-nodes N] [--deadline 120]
//!             [--coordinator PATH] [--keep]
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use medfed_e2e::load::{ProcessUsage, mlp_for_params, spawn_light_node};
use medfed_e2e::{Consortium, SCHEMA, strip_ansi, synthetic_csv};
use medfed_node::egress::EgressLog;
use medfed_protocol::model::{ModelKind, ModelSpec};
use medfed_protocol::schema::Schema;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medfed-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, resolved.
#[derive(Debug)]
struct Args {
    nodes: usize,
    params: usize,
    rounds: u64,
    /// `None`: every node pairs with every other.
    neighbours: Option<usize>,
    threshold: Option<usize>,
    rows: usize,
    min_nodes: Option<usize>,
    deadline_secs: f64,
    coordinator: Option<PathBuf>,
    keep: bool,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Self {
            nodes: 100,
            params: 100_000,
            rounds: 3,
            neighbours: Some(20),
            threshold: None,
            rows: 40,
            min_nodes: None,
            deadline_secs: 120.0,
            coordinator: None,
            keep: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--keep" {
                args.keep = true;
                continue;
            }
            if flag == "--help" || flag == "-h" {
                println!(
                    "medfed-load [--nodes 100] [--params 100000] [--rounds 3] [--neighbours 20|all] \
                     [--threshold T] [--rows 40] [--min-nodes N] [--deadline 120] \
                     [--coordinator PATH] [--keep]"
                );
                std::process::exit(0);
            }
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<usize>()
                    .with_context(|| format!("{flag} {value}: not a number"))
            };
            match flag.as_str() {
                "--nodes" => args.nodes = number()?,
                "--params" => args.params = number()?,
                "--rounds" => args.rounds = number()? as u64,
                "--neighbours" if value == "all" => args.neighbours = None,
                "--neighbours" => args.neighbours = Some(number()?),
                "--threshold" => args.threshold = Some(number()?),
                "--rows" => args.rows = number()?,
                "--min-nodes" => args.min_nodes = Some(number()?),
                "--deadline" => args.deadline_secs = number()? as f64,
                "--coordinator" => args.coordinator = Some(value.into()),
                other => bail!("unknown flag {other} (try --help)"),
            }
        }
        if args.nodes < 2 || args.rows < 4 || args.rounds == 0 {
            bail!("need at least 2 nodes, 4 rows per node and 1 round");
        }
        Ok(args)
    }
}

/// What the coordinator's log says, line by line.
#[derive(Debug)]
enum Event {
    Listening(SocketAddr),
    Statistics,
    RoundApplied {
        round: u64,
        seconds: f64,
        nodes: u64,
    },
    Usage(ProcessUsage),
    Dropped(String),
    RoundFailed(String),
}

fn run() -> anyhow::Result<ExitCode> {
    let args = Args::parse()?;
    let coordinator_bin = match &args.coordinator {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable folder")?
            .join("medfed-coordinator"),
    };
    if !coordinator_bin.exists() {
        bail!(
            "{} not found: build it (scripts/load does) or pass --coordinator",
            coordinator_bin.display()
        );
    }

    // The consortium: N certificates, N synthetic hospitals (10 different populations).
    let setup = Instant::now();
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("node-{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let consortium = Consortium::new(&refs, 4);
    for (i, name) in names.iter().enumerate() {
        std::fs::write(
            consortium.csv(name),
            synthetic_csv(args.rows, 1 + i as u64 % 10),
        )?;
    }
    let input_dim = Schema::parse(SCHEMA)?.num_features();
    let kind = mlp_for_params(input_dim, args.params);
    let spec = ModelSpec {
        kind: kind.clone(),
        input_dim,
    };
    let param_count = spec.layout().len();
    let ModelKind::Mlp { hidden } = &kind else {
        bail!("an MLP was expected");
    };
    let min_nodes = args.min_nodes.unwrap_or(args.nodes);
    let holders = match args.neighbours {
        Some(k) if k + 1 < args.nodes => k + 1,
        _ => args.nodes,
    };
    let threshold = args.threshold.unwrap_or(2 * holders / 3 + 1);
    let dir = consortium.dir.path().to_owned();
    let config_path = write_coordinator_config(&consortium, &args, hidden, min_nodes)?;
    println!(
        "medfed-load: {} nodes, MLP {input_dim}→{hidden:?}→1 = {param_count} parameters, \
         {} rounds, SecAgg+ with {} neighbours (threshold {threshold}), min_nodes {min_nodes}, \
         {} rows per node; light trainer (protocol cost only, no training)",
        args.nodes,
        args.rounds,
        args.neighbours
            .map_or_else(|| "all".to_owned(), |k| k.to_string()),
        args.rows,
    );
    println!(
        "  consortium in {} (set up in {:.1} s)",
        dir.display(),
        setup.elapsed().as_secs_f64()
    );

    // The coordinator, a real process.
    let drops_before = udp_receive_buffer_errors();
    let load_before = load_average();
    let log_path = dir.join("coordinator.log");
    let mut child = Command::new(&coordinator_bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", coordinator_bin.display()))?;
    let pid = child.id().to_string();
    let log = Arc::new(Mutex::new(std::fs::File::create(&log_path)?));
    let (events_tx, events) = mpsc::channel();
    let readers = [
        spawn_log_reader(child.stderr.take(), log.clone(), Some(events_tx)),
        spawn_log_reader(child.stdout.take(), log.clone(), None),
    ];
    // Polled as a fallback, should the coordinator not log its own usage.
    let running = Arc::new(AtomicBool::new(true));
    let polled = {
        let (running, pid) = (running.clone(), pid.clone());
        std::thread::spawn(move || {
            let mut last = None;
            while running.load(Ordering::Relaxed) {
                if let Some(usage) = ProcessUsage::read(&pid) {
                    last = Some(usage);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            last
        })
    };

    let mut timeline: Vec<(Instant, Event)> = Vec::new();
    let addr = loop {
        match events.recv_timeout(Duration::from_secs(30)) {
            Ok(Event::Listening(addr)) => break addr,
            Ok(other) => timeline.push((Instant::now(), other)),
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "the coordinator did not start listening; see {}",
                    log_path.display()
                );
            }
        }
    };

    // The nodes: tokio tasks in this process, one QUIC connection and certificate each.
    // Each node's egress log is fsync'd before every message. A real node does that on its own
    // machine; here 100 nodes would share one disk and block the harness's few tokio workers on
    // it, so their state goes to tmpfs where one exists (the coordinator's stays on disk).
    let node_state = tempfile::Builder::new()
        .prefix("medfed-load-nodes")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm")
        } else {
            consortium.dir.path()
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut weights = Vec::new();
    let tasks: Vec<_> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut config = consortium.node_config(name, addr);
            config.reconnect_for = Duration::from_secs(120);
            config.state_dir = node_state.path().join(name);
            let (task, n) = spawn_light_node(config, i as u64 + 1)?;
            weights.push(n);
            tasks.push((name.clone(), task));
        }
        anyhow::Ok(tasks)
    })?;
    let outcomes = runtime.block_on(async {
        let mut outcomes = Vec::new();
        for (name, task) in tasks {
            outcomes.push((name, task.await));
        }
        outcomes
    });
    let status = child.wait()?;
    let total = started.elapsed();
    running.store(false, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.join();
    }
    timeline.extend(
        events
            .try_iter()
            .map(|e| (Instant::now(), e))
            .collect::<Vec<_>>(),
    );
    let polled = polled.join().ok().flatten();
    let harness = ProcessUsage::read("self");
    let udp_drops = udp_receive_buffer_errors()
        .zip(drops_before)
        .map(|(after, before)| after.saturating_sub(before));
    drop(runtime);

    // Report.
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(name, outcome)| match outcome {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("{name}: {e}")),
            Err(e) => Some(format!("{name}: task: {e}")),
        })
        .collect();
    let mut rounds = Vec::new();
    let (mut dropouts, mut restarts, mut usage) = (Vec::new(), Vec::new(), None);
    for (_, event) in &timeline {
        match event {
            Event::RoundApplied {
                round,
                seconds,
                nodes,
            } => rounds.push((*round, *seconds, *nodes)),
            Event::Usage(u) => usage = Some((*u, "logged by the coordinator")),
            Event::Dropped(line) => dropouts.push(line.clone()),
            Event::RoundFailed(line) => restarts.push(line.clone()),
            Event::Listening(_) | Event::Statistics => {}
        }
    }
    let usage = usage.or_else(|| polled.map(|u| (u, "polled from /proc, last sample")));
    let bytes = egress_by_round(node_state.path(), &names);

    println!(
        "coordinator exited with {status}; run took {:.2} s",
        total.as_secs_f64()
    );
    println!("  round  nodes  seconds  bytes sent per node (mean)");
    for (round, seconds, nodes) in &rounds {
        let sent = bytes.get(&Some(*round)).copied().unwrap_or(0);
        println!(
            "  {round:>5}  {nodes:>5}  {seconds:>7.3}  {:>10.0}",
            sent as f64 / args.nodes as f64
        );
    }
    if let Some(sent) = bytes.get(&Some(0)) {
        println!(
            "  statistics round: {:.0} bytes sent per node",
            *sent as f64 / args.nodes as f64
        );
    }
    let all: u64 = bytes.values().sum();
    println!(
        "  all messages: {:.0} bytes sent per node over the run",
        all as f64 / args.nodes as f64
    );
    match usage {
        Some((u, source)) => println!(
            "  coordinator: peak RSS {:.1} MiB, CPU {:.2} s (user {:.2} + system {:.2}) [{source}]",
            u.peak_rss_kib as f64 / 1024.0,
            u.cpu_secs(),
            u.user_secs,
            u.system_secs
        ),
        None => println!("  coordinator: resource usage unavailable"),
    }
    if let Some(h) = harness {
        println!(
            "  harness ({} nodes): peak RSS {:.1} MiB, CPU {:.2} s (user {:.2} + system {:.2})",
            args.nodes,
            h.peak_rss_kib as f64 / 1024.0,
            h.cpu_secs(),
            h.user_secs,
            h.system_secs
        );
    }
    println!(
        "  dropouts: {}; round restarts: {}; nodes that failed: {}",
        dropouts.len(),
        restarts.len(),
        failed.len()
    );
    println!(
        "  host load average (1 min) before / after: {} / {} on {} CPUs (others' processes count too)",
        load_before.as_deref().unwrap_or("?"),
        load_average().as_deref().unwrap_or("?"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if let Some(drops) = udp_drops {
        println!("  UDP datagrams dropped for a full receive buffer (whole host): {drops}");
    }
    for line in dropouts.iter().chain(&restarts).chain(&failed).take(10) {
        println!("    {line}");
    }
    let mean = rounds.iter().map(|(_, s, _)| s).sum::<f64>() / rounds.len().max(1) as f64;
    println!(
        "  summary | {} nodes | {param_count} params | {} neighbours | threshold {threshold} | {} rounds | {} s per round (mean {mean:.2}) | coordinator peak RSS {} | coordinator CPU {} | harness CPU {}",
        args.nodes,
        args.neighbours
            .map_or_else(|| "all".to_owned(), |k| k.to_string()),
        rounds.len(),
        rounds
            .iter()
            .map(|(_, s, _)| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
        usage.map_or_else(
            || "?".into(),
            |(u, _)| format!("{:.0} MiB", u.peak_rss_kib as f64 / 1024.0)
        ),
        usage.map_or_else(|| "?".into(), |(u, _)| format!("{:.1} s", u.cpu_secs())),
        harness.map_or_else(|| "?".into(), |h| format!("{:.1} s", h.cpu_secs())),
    );
    println!("  coordinator log: {}", log_path.display());
    let ok = status.success()
        && failed.is_empty()
        && rounds.len() as u64 == args.rounds
        && rounds.iter().all(|(_, _, n)| *n as usize == args.nodes);
    if args.keep || !ok {
        let kept = consortium.dir.keep();
        let nodes = node_state.keep();
        println!(
            "  files kept in {} (nodes' state in {})",
            kept.display(),
            nodes.display()
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("medfed-load: the run did not complete every round with every node");
        ExitCode::FAILURE
    })
}

/// Writes `coordinator.toml` in the consortium folder.
fn write_coordinator_config(
    consortium: &Consortium,
    args: &Args,
    hidden: &[usize],
    min_nodes: usize,
) -> anyhow::Result<PathBuf> {
    let tls = consortium.certs.coordinator_tls();
    let dir = consortium.dir.path();
    let mut secure = String::from("enabled = true\n");
    if let Some(k) = args.neighbours {
        secure.push_str(&format!("neighbours = {k}\n"));
    }
    if let Some(t) = args.threshold {
        secure.push_str(&format!("threshold = {t}\n"));
    }
    let crl = tls
        .crl
        .as_ref()
        .map(|p| format!("crl = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    let text = format!(
        r#"listen = "127.0.0.1:0"
data_dir = {data:?}
schema = {schema:?}
members = {members:?}

[tls]
ca_cert = {ca:?}
cert = {cert:?}
key = {key:?}
{crl}
[task]
model = {{ kind = "mlp", hidden = {hidden:?} }}
rounds = {rounds}
min_nodes = {min_nodes}
seed = 11
round_deadline_secs = {deadline}
wait_for_nodes_secs = {deadline}

[task.training]
local_epochs = 1
learning_rate = 0.05
batch_size = 32

[secure_aggregation]
{secure}"#,
        data = dir.join("coordinator").display().to_string(),
        schema = consortium.schema.display().to_string(),
        members = consortium.certs.members.display().to_string(),
        ca = tls.ca_cert.display().to_string(),
        cert = tls.cert.display().to_string(),
        key = tls.key.display().to_string(),
        rounds = args.rounds,
        deadline = args.deadline_secs,
    );
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Copies a child's output to the log file and, for stderr, turns known lines into events.
fn spawn_log_reader(
    stream: Option<impl std::io::Read + Send + 'static>,
    log: Arc<Mutex<std::fs::File>>,
    events: Option<mpsc::Sender<Event>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(stream) = stream else { return };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            if let Ok(mut file) = log.lock() {
                let _ = writeln!(file, "{line}");
            }
            if let Some(events) = &events
                && let Some(event) = parse_event(&line)
            {
                let _ = events.send(event);
            }
        }
    })
}

fn parse_event(line: &str) -> Option<Event> {
    let field = |name: &str| {
        line.split(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == ',')
            .find_map(|token| token.strip_prefix(name)?.strip_prefix('='))
    };
    if line.contains("coordinator listening") {
        return field("local_addr")?.parse().ok().map(Event::Listening);
    }
    if line.contains("federated statistics computed") {
        return Some(Event::Statistics);
    }
    if line.contains("round applied") {
        return Some(Event::RoundApplied {
            round: field("round")?.parse().ok()?,
            seconds: field("seconds")?.parse().ok()?,
            nodes: field("nodes")?.parse().ok()?,
        });
    }
    if line.contains("resource usage") {
        return Some(Event::Usage(ProcessUsage {
            user_secs: field("cpu_user_secs")?.parse().ok()?,
            system_secs: field("cpu_system_secs")?.parse().ok()?,
            peak_rss_kib: field("peak_rss_kib")?.parse().ok()?,
        }));
    }
    if line.contains("node left out of the round") {
        return Some(Event::Dropped(line.to_owned()));
    }
    if line.contains("round failed") {
        return Some(Event::RoundFailed(line.to_owned()));
    }
    None
}

/// Bytes all nodes sent, per round (`None`: `hello`), from their egress logs (`dir/<node>`).
fn egress_by_round(dir: &Path, names: &[String]) -> BTreeMap<Option<u64>, u64> {
    let mut out = BTreeMap::new();
    for name in names {
        for entry in EgressLog::read(&dir.join(name)).unwrap_or_default() {
            *out.entry(entry.round).or_default() += entry.bytes;
        }
    }
    out
}

/// The host's count of UDP datagrams dropped because a socket's receive buffer was full
/// (`RcvbufErrors` in `/proc/net/snmp`).
fn udp_receive_buffer_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The host's one-minute load average, from `/proc/loadavg`.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}
