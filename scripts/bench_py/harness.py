"""scripts/bench's driver: medfed against Flower on the same federated task, and medfed against
the machine's limits. Writes docs/BENCHMARKS.md. Run through scripts/bench, which prepares the
virtual environment, the binaries and the benches first.
"""

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# The release binaries, under CARGO_TARGET_DIR when it is set (as cargo puts them).
BIN = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release"
SPLIT = BIN / "medfed-bench-split"
HEART = REPO / ".deps" / "data" / "heart"
SCHEMA = REPO / "config" / "heart" / "schema.toml"
HOSPITALS = ["cleveland", "hungary", "switzerland", "va_long_beach"]
# 20 shards: each hospital's rows dealt round-robin over its share of the shards.
SHARDS_20 = {"cleveland": 8, "hungary": 7, "switzerland": 1, "va_long_beach": 4}
HOLDOUT, SPLIT_SEED = 0.25, 1
TICK = os.sysconf("SC_CLK_TCK")
VENV = Path(sys.executable).parent


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


# ---- data -------------------------------------------------------------------------------------

def read_rows(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        return header, [row for row in r]


def node_files(nodes):
    """[(name, header, rows)] for `nodes` nodes: the four hospitals, or 20 deterministic shards."""
    out = []
    for h in HOSPITALS:
        header, rows = read_rows(HEART / f"{h}.csv")
        k = 1 if nodes == 4 else SHARDS_20[h]
        for s in range(k):
            name = h if k == 1 else f"{h}_{s}"
            out.append((name, header, rows[s::k]))
    assert len(out) == nodes, (nodes, len(out))
    return out


def encode(header, rows, schema):
    """medfed's feature encoding (protocol/src/schema.rs): numeric as is, one-hot per level."""
    idx = {c: i for i, c in enumerate(header)}
    feats, labels = [], []
    pos = set(schema["label"]["positive"])
    for row in rows:
        x = []
        for col in schema["columns"]:
            v = row[idx[col["name"]]]
            if col["type"] == "numeric":
                x.append(float(v))
            else:
                x.extend(1.0 if v == lvl else 0.0 for lvl in col["levels"])
        feats.append(x)
        labels.append(1.0 if row[idx[schema["label"]["column"]]] in pos else 0.0)
    return np.array(feats, dtype=np.float32), np.array(labels, dtype=np.float32)


def prepare_data(nodes, root):
    """Per node: a CSV for medfed, and for Flower an .npz of the same rows split exactly as the
    medfed node splits them (the split tool runs medfed's shuffle), standardised with the pooled
    training-split mean and population std as medfed's federated statistics round computes them."""
    schema = tomllib.loads(SCHEMA.read_text())
    d = root / f"data{nodes}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    parts = []
    for i, (name, header, rows) in enumerate(node_files(nodes)):
        with open(d / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        held = {int(s) for s in subprocess.run([SPLIT, str(len(rows)), str(HOLDOUT), str(SPLIT_SEED)],
                                               check=True, capture_output=True, text=True).stdout.split()}
        x, y = encode(header, rows, schema)
        mask = np.array([j in held for j in range(len(rows))])
        parts.append((name, x[~mask], y[~mask], x[mask], y[mask]))
    train = np.concatenate([p[1] for p in parts]).astype(np.float64)
    mean, std = train.mean(0), train.std(0)
    col = 0
    for c in schema["columns"]:
        if c["type"] == "numeric":
            col += 1
        else:
            w = len(c["levels"])
            mean[col:col + w], std[col:col + w] = 0.0, 1.0
            col += w
    std[std <= 0] = 1.0
    for i, (name, xtr, ytr, xte, yte) in enumerate(parts):
        f = lambda a: ((a - mean) / std).astype(np.float32)
        np.savez(d / f"node-{i}.npz", x_train=f(xtr), y_train=ytr, x_test=f(xte), y_test=yte)
    return d, [p[0] for p in parts], train.shape[1]


# ---- process monitoring -----------------------------------------------------------------------

def children_of():
    kids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(p))
    return kids


def proc_sample(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        hwm = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        return cpu, hwm, cmd
    except (OSError, ValueError, IndexError):
        return None


class Monitor:
    """Polls the processes of each group (roots and their descendants; `match` keeps only those
    whose command line contains one of its words) every `period` seconds: per process the CPU
    time (utime + stime) seen over time and the peak resident set (VmHWM)."""

    def __init__(self, period=0.1):
        self.period = period
        self.groups = {}  # name -> (roots, match)
        self.series = {}  # name -> {pid: [(t, cpu)]}
        self.hwm = {}     # name -> {pid: bytes}
        self.cmds = {}
        self.sockets = []  # (t, {socket key: (sent, received)}) for ss-watched ports
        self.ports = None
        self._stop = threading.Event()
        self._thread = None

    def watch(self, name, roots, match=None):
        self.groups[name] = (list(roots), match)
        self.series.setdefault(name, {})
        self.hwm.setdefault(name, {})

    def watch_tcp(self, port, pids):
        self.ports = (port, set(pids))

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.period)

    def poll(self):
        now = time.time()
        kids = children_of()
        for name, (roots, match) in self.groups.items():
            todo, seen = list(roots), set()
            while todo:
                p = todo.pop()
                if p in seen:
                    continue
                seen.add(p)
                todo.extend(kids.get(p, []))
            for p in seen:
                s = proc_sample(p)
                if s is None:
                    continue
                cpu, hwm, cmd = s
                if match and not any(m in cmd for m in match):
                    continue
                self.series[name].setdefault(p, []).append((now, cpu))
                self.hwm[name][p] = max(self.hwm[name].get(p, 0), hwm)
                if cmd:
                    self.cmds[p] = cmd
        if self.ports:
            self.sockets.append((now, tcp_bytes(*self.ports)))

    def cpu_between(self, name, t0, t1):
        """CPU seconds the group's processes used between t0 and t1 (linear between samples)."""
        total = 0.0
        for pts in self.series[name].values():
            total += interp(pts, t1) - interp(pts, t0)
        return total

    def cpu_total(self, name):
        return sum(pts[-1][1] for pts in self.series[name].values())

    def peak_rss(self, name):
        """Peak resident set of the group: the sum of its processes' peaks."""
        return sum(self.hwm[name].values())

    def processes(self, name):
        names = set()
        for p in self.series[name]:
            words = [w.rsplit("/", 1)[-1] for w in self.cmds.get(p, "").split()]
            words = [w for w in words if not w.startswith(("python", "-"))]
            if words:
                names.add(words[0])
        return sorted(names)

    def tcp_between(self, t0, t1):
        """(sent, received) bytes on the watched TCP connections in [t0, t1]: for each connection
        its last counters seen in the window less those seen at or before t0 (0 for one opened
        later), so that connections opened and closed within the window count too."""
        first, last = {}, {}
        for t, snap in self.sockets:
            for key, v in snap.items():
                if t <= t0:
                    first[key] = v
                elif t <= t1:
                    last[key] = v
        sent = sum(v[0] - first.get(k, (0, 0))[0] for k, v in last.items())
        recv = sum(v[1] - first.get(k, (0, 0))[1] for k, v in last.items())
        return sent, recv


def interp(pts, t):
    if t <= pts[0][0]:
        return 0.0 if t < pts[0][0] - 1.0 else pts[0][1]
    for (ta, ca), (tb, cb) in zip(pts, pts[1:]):
        if ta <= t <= tb:
            return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)
    return pts[-1][1]


def tcp_bytes(port, pids):
    """Per established TCP connection to `port` owned by one of `pids`, as that client sees it:
    bytes it sent (bytes_acked) and received (bytes_received), from the kernel's tcp_info
    (`ss -tinp`)."""
    out = subprocess.run(["ss", "-Htinp", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True).stdout
    socks, key = {}, None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            m = re.search(r"(\S+:\d+)\s+(\S+:\d+)\s+users:.*?pid=(\d+)", line)
            key = (m.group(1), m.group(2)) if m and int(m.group(3)) in pids else None
            continue
        if key:
            acked = re.search(r"bytes_acked:(\d+)", line)
            recv = re.search(r"bytes_received:(\d+)", line)
            socks[key] = (int(acked.group(1)) if acked else 0, int(recv.group(1)) if recv else 0)
    return socks


class CountingProxy:
    """A TCP relay between the Flower SuperNodes and the SuperLink that counts the bytes each way
    (HTTP requests and responses, headers included; no TCP/IP headers), time-stamped."""

    def __init__(self, listen, target):
        import asyncio
        self.listen, self.target = listen, target
        self.events = [(0.0, 0, 0)]  # (time, cumulative up, cumulative down)
        self.up = self.down = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self):
        import asyncio
        asyncio.set_event_loop(self.loop)

        async def pipe(reader, writer, upward):
            try:
                while data := await reader.read(1 << 16):
                    if upward:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    self.events.append((time.time(), self.up, self.down))
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer):
            try:
                r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, w2, True), pipe(r2, writer, False))

        async def serve():
            server = await asyncio.start_server(handle, "127.0.0.1", self.listen)
            self.ready.set()
            async with server:
                await server.serve_forever()

        try:
            self.loop.run_until_complete(serve())
        except RuntimeError:
            pass

    def between(self, t0, t1):
        import bisect
        times = [e[0] for e in self.events]
        a = self.events[max(bisect.bisect_right(times, t0) - 1, 0)]
        b = self.events[max(bisect.bisect_right(times, t1) - 1, 0)]
        return b[1] - a[1], b[2] - a[2]

    def stop(self):
        """Nothing to do: the relay's thread is a daemon, and stopping its loop under open
        connections only makes asyncio complain; once the nodes are gone it is idle."""


def wait_port(port, timeout):
    """Waits until something listens on TCP `port`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["ss", "-Hltn", f"( sport = :{port} )"], capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.3)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


# ---- medfed -----------------------------------------------------------------------------------

def run_medfed(cfg, data_dir, names, root, port):
    nodes, hidden, secagg, rounds = cfg["nodes"], cfg["hidden"], cfg["secagg"], cfg["rounds"]
    run = root / f"medfed-{cfg['id']}"
    if run.exists():
        shutil.rmtree(run)
    (run / "logs").mkdir(parents=True)
    subprocess.run([BIN / "medfed-certs", "dev", "--out", run / "certs", "--nodes", str(nodes),
                    "--names", ",".join(names)], check=True, capture_output=True)
    sa = f"enabled = {'true' if secagg else 'false'}\n"
    if secagg:
        sa += f"neighbours = {cfg['shares'] - 1}\nthreshold = {cfg['threshold']}\n"
    if cfg.get("update_clip"):
        sa += f"update_clip = {float(cfg['update_clip'])}\n"
    if cfg.get("upload_bits"):
        sa += f"upload_bits = {cfg['upload_bits']}\n"
    hidden_toml = ", ".join(str(h) for h in hidden)
    # Training rounds that release only the update (Flower's runs evaluate none, fraction_evaluate=0).
    evaluate_every = f'\nevaluate_every = "{cfg["evaluate_every"]}"' if cfg.get("evaluate_every") else ""
    (run / "coordinator.toml").write_text(f"""listen = "127.0.0.1:{port}"
data_dir = "coordinator"
schema = "{SCHEMA}"
members = "certs/members.toml"

[tls]
ca_cert = "certs/ca.pem"
cert = "certs/coordinator.pem"
key = "certs/coordinator.key"
crl = "certs/crl.pem"

[task]
model = {{ kind = "mlp", hidden = [{hidden_toml}] }}
rounds = {rounds}
min_nodes = {nodes}
seed = 42{evaluate_every}
round_deadline_secs = 600
wait_for_nodes_secs = 300

[task.training]
local_epochs = {cfg['epochs']}
learning_rate = {cfg['lr']}
batch_size = {cfg['batch']}

[strategy]
name = "fed_avg"

[secure_aggregation]
{sa}""")
    dashboard_port = port + 2 if cfg.get("dashboard") else None
    if dashboard_port:
        with open(run / "coordinator.toml", "a") as f:
            f.write(f'\n[dashboard]\nlisten = "127.0.0.1:{dashboard_port}"\n')
    for name in names:
        (run / f"{name}.toml").write_text(f"""coordinator = "127.0.0.1:{port}"
server_name = "localhost"
state_dir = "nodes/{name}"
device = "cpu"
threads = 1

[tls]
ca_cert = "certs/ca.pem"
cert = "certs/{name}.pem"
key = "certs/{name}.key"

[data]
csv = "{data_dir / (name + '.csv')}"
schema = "{SCHEMA}"
holdout_fraction = {HOLDOUT}
split_seed = {SPLIT_SEED}

[policy]
members = "certs/members.toml"
require_secure_aggregation = {'true' if secagg else 'false'}
""")
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    mon = Monitor()
    t_launch = time.time()
    coord = subprocess.Popen([BIN / "medfed-coordinator", "run", "--config", run / "coordinator.toml"],
                             stdout=open(run / "summary.txt", "w"), stderr=open(run / "logs/coordinator.log", "w"),
                             env=env)
    mon.watch("coordinator", [coord.pid])
    time.sleep(0.3)
    procs = []
    for name in names:
        procs.append(subprocess.Popen([BIN / "medfed-node", "run", "--config", run / f"{name}.toml"],
                                      stdout=open(run / f"logs/{name}.out", "w"),
                                      stderr=open(run / f"logs/{name}.log", "w"), env=env))
    mon.watch("nodes", [p.pid for p in procs])
    mon.start()
    scraper = Scraper(dashboard_port) if dashboard_port else None
    try:
        rc = coord.wait(timeout=cfg["timeout"])
        for p in procs:
            p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = "timeout"
    finally:
        mon.stop()
        if scraper:
            scraper.stop()
        for p in [coord] + procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if rc != 0:
        raise RuntimeError(f"medfed run {cfg['id']} failed ({rc}); see {run}/logs")
    # Round timings and the final AUC from the run summary the coordinator keeps: each round's
    # completion time and duration.
    summary = json.loads((run / "coordinator" / "summary.json").read_text())
    applied = summary["rounds"]
    if len(applied) != rounds:
        raise RuntimeError(f"medfed run {cfg['id']}: {len(applied)} rounds applied, {rounds} expected")
    ends = [r["completed_at_ms"] / 1e3 for r in applied]
    durs = [r["seconds"] for r in applied]
    t0, t1 = ends[0] - durs[0], ends[-1]
    final = (summary.get("final_evaluation") or {}).get("auc")
    # Bytes each node sent in the training rounds, from its egress log.
    sent = 0
    for name in names:
        out = subprocess.run([BIN / "medfed-node", "egress", "--config", run / f"{name}.toml"],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0].isdigit() and parts[1].isdigit() and 1 <= int(parts[1]) <= rounds:
                sent += int(parts[3])
    figures = run_figures(mon, t0, t1, rounds, nodes, t_launch, sent, None,
                          float(final) if final is not None else float("nan"))
    if cfg["secagg"]:
        figures["consistency"] = consistency_cost(applied)
    if scraper:
        figures["scrapes"] = scraper.count
        figures["events"] = scraper.events
    return figures


class Scraper:
    """More than an operator's tools do to a coordinator's dashboard during a run: an open page
    follows the event stream, and /metrics and /api/summary are each read four times a second
    (Prometheus scrapes every 15 s by default), on threads."""

    PERIOD = 0.25

    def __init__(self, port):
        self.port, self.count, self.events, self.done = port, 0, 0, threading.Event()
        self.threads = [threading.Thread(target=self._poll, daemon=True),
                        threading.Thread(target=self._follow, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _poll(self):
        import urllib.request
        while not self.done.wait(self.PERIOD):
            for path in ("/metrics", "/api/summary"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                        r.read()
                    self.count += 1
                except OSError:
                    pass

    def _follow(self):
        import urllib.request
        while not self.done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/events", timeout=5) as r:
                    for line in r:
                        if line.startswith(b"event: summary"):
                            self.events += 1
                        if self.done.is_set():
                            return
            except OSError:
                self.done.wait(self.PERIOD)

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=10)


def consistency_cost(applied):
    """The consistency round's cost in each training round, from the run summary's per-phase
    timings of each applied round: its seconds, and its ratio to the rest of the round (the
    round's seconds less the consistency phase), i.e. to the round without it."""
    seconds = [r["phase_seconds"].get("consistency", 0.0) for r in applied]
    round_seconds = [r["seconds"] for r in applied]
    ratios = [c / (total - c) for c, total in zip(seconds, round_seconds)]
    return {"seconds": seconds, "round_seconds": round_seconds, "ratios": ratios,
            "worst_ratio": max(ratios)}


def consistency_section(rows):
    """Lines of the page's section on the consistency round's cost (empty without figures)."""
    rows = [r for r in rows if r.get("medfed", {}).get("consistency")]
    if not rows:
        return []
    L = ["<!-- consistency -->", "",
         "### The consistency round's cost",
         "",
         "Each secure-aggregation round has a consistency phase (every survivor signs the survivor "
         "set before any unmasking share leaves it). Its wall time per training round, from the "
         "coordinator's run summary (`summary.json`: each round's seconds per phase), against the "
         "rest of the same round (the round's seconds less the phase): the round without it. Goal: at "
         "most 10 %.",
         "",
         "| Configuration | Consistency phase per round | Round without it | Ratio (worst round) |",
         "|---|---|---|---|"]
    for row in rows:
        c = row["medfed"]["consistency"]
        n = len(c["seconds"])
        phase = sum(c["seconds"]) / n
        rest = sum(t - s for s, t in zip(c["seconds"], c["round_seconds"])) / n
        L.append(f"| {row['cfg']['id']} ({row['cfg']['params']:,} params) | {phase * 1e3:.1f} ms | "
                 f"{rest * 1e3:.0f} ms | {phase / rest:.3f} ({c['worst_ratio']:.3f}) |")
    L += ["", "<!-- /consistency -->"]
    return L


MEMORY_GOAL = "at most 3 × the model's f32 bytes + 20 MB"


def memory_goal(params):
    """Issue 18's bound on the coordinator's peak RSS for a model of `params` parameters."""
    return 3 * 4 * params + 20e6


def memory_section(rows, aggregate=None):
    """Lines of the page's section on the coordinator's memory against the model's size (empty
    without figures): each run's coordinator peak RSS, the model's f32 bytes and the goal; and
    the decode + sum against memcpy ratio of protocol/benches/aggregate.rs when it was run."""
    rows = [r for r in rows if r.get("medfed", {}).get("coord_peak_rss")]
    if not rows and not aggregate:
        return []
    L = ["<!-- memory -->", "",
         "### The coordinator's memory against the model's size",
         "",
         f"Goal: coordinator peak RSS {MEMORY_GOAL}, at 4 and 20 hospitals alike (the masked "
         "inputs are summed as they arrive, so the hospitals' number should not show). Peak RSS is "
         "the coordinator process's `VmHWM` over the whole run.",
         ""]
    if rows:
        L += ["| Configuration | Model (f32) | Coordinator peak RSS | Goal | RSS / model | Within goal |",
              "|---|---|---|---|---|---|"]
        for row in rows:
            c, rss = row["cfg"], row["medfed"]["coord_peak_rss"]
            model = 4 * c["params"]
            goal = memory_goal(c["params"])
            L.append(f"| {c['id']} ({c['params']:,} params) | {model / 1e6:.1f} MB | {rss / 1e6:.1f} MB | "
                     f"{goal / 1e6:.1f} MB | {rss / model:.2f} | {'yes' if rss <= goal else '**no**'} |")
        L.append("")
    if aggregate:
        fresh = ""
        if "ratio_decode_fresh" in aggregate:
            fresh = (f"; into a fresh sum each round, as the coordinator now sums (it drops "
                     f"each round's sum once the round is applied): **{aggregate['ratio_decode_fresh']:.2f}** "
                     f"({aggregate['decode_fresh']:.2f} GB/s, {aggregate['faults_decode_fresh']} "
                     "minor page faults a round)")
        L.append(f"Decode + sum against memcpy (goal ≥ 0.8), {aggregate['nodes']} nodes × "
                 f"{aggregate['words']:,} words, each masked input's pieces read in place from their "
                 f"frames and summed (protocol/benches/aggregate.rs, same run; memcpy "
                 f"{aggregate['memcpy']:.2f} GB/s): into a sum already mapped "
                 f"**{aggregate['ratio_decode']:.2f}** ({aggregate['decode']:.2f} GB/s){fresh}.")
        L.append("")
    L.append("<!-- /memory -->")
    return L


def run_aggregate(root):
    """protocol/benches/aggregate.rs: the coordinator's aggregation against memcpy, parsed."""
    res = {}
    out = cargo_bench(["-p", "medfed-protocol", "--bench", "aggregate"], root / "aggregate-bench.txt")
    m = re.search(r"aggregate secagg (\d+) nodes x (\d+) words: handle_input ([\d.]+) GB/s reused sum, "
                  r"([\d.]+) GB/s fresh sum; decode\+handle_input ([\d.]+) GB/s reused sum; memcpy ([\d.]+) GB/s; "
                  r"ratio ([\d.]+) handle_input reused, ([\d.]+) handle_input fresh, ([\d.]+) decode", out)
    f = re.search(r"aggregate secagg page faults per round \(minor, /proc/self/stat\): handle_input (\d+) reused "
                  r"sum, (\d+) fresh sum", out)
    p = re.search(r"aggregate plain \d+ nodes x \d+ f32: add_into ([\d.]+) GB/s; memcpy ([\d.]+) GB/s; "
                  r"ratio ([\d.]+)", out)
    d = re.search(r"aggregate secagg decode\+handle_input fresh sum ([\d.]+) GB/s; ratio ([\d.]+); "
                  r"minor page faults per round (\d+)", out)
    if m:
        res["aggregate"] = dict(nodes=int(m.group(1)), words=int(m.group(2)), handle=float(m.group(3)),
                                fresh=float(m.group(4)), decode=float(m.group(5)), memcpy=float(m.group(6)),
                                ratio=float(m.group(7)), ratio_fresh=float(m.group(8)),
                                ratio_decode=float(m.group(9)))
        if f:
            res["aggregate"].update(faults_reused=int(f.group(1)), faults_fresh=int(f.group(2)))
        if d:
            res["aggregate"].update(decode_fresh=float(d.group(1)), ratio_decode_fresh=float(d.group(2)),
                                    faults_decode_fresh=int(d.group(3)))
    if p:
        res["aggregate_plain"] = dict(add=float(p.group(1)), memcpy=float(p.group(2)), ratio=float(p.group(3)))
    return res


def console_section(pairs, rounds):
    """Lines of the page's section on the dashboard's cost: round time and the coordinator's
    peak RSS with the dashboard off and on (scraped), each run `len(pairs)` times alternately."""
    def median(values):
        values = sorted(values)
        n = len(values)
        return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    off = [p["off"] for p in pairs]
    on = [p["on"] for p in pairs]
    wall_off = median([r["wall_per_round"] for r in off])
    wall_on = median([r["wall_per_round"] for r in on])
    rss_off = max(r["coord_peak_rss"] for r in off)
    rss_on = max(r["coord_peak_rss"] for r in on)
    scrapes = sum(r.get("scrapes", 0) for r in on)
    events = sum(r.get("events", 0) for r in on)
    ratios = [p["on"]["wall_per_round"] / p["off"]["wall_per_round"] for p in pairs]
    L = ["<!-- console -->", "",
         "### The operator's dashboard's cost",
         "",
         f"The demo's task (4 hospitals, its MLP, secure aggregation, {rounds} rounds), run "
         f"{len(pairs)} times with `[dashboard]` off and {len(pairs)} times with it on, alternately; "
         "with it on, a client followed `/events` as an open page does and read `/metrics` and "
         f"`/api/summary` four times a second each ({events} events and {scrapes} answered "
         "requests in all). Round time: the median over the runs of each "
         "run's mean round (from `summary.json`). Goals: round-time ratio at most 1.02; the "
         "coordinator's peak RSS under 30 MiB.",
         "",
         "| Dashboard | Round time (median) | Coordinator peak RSS (worst run) |",
         "|---|---|---|",
         f"| off | {wall_off * 1e3:.0f} ms | {rss_off / 2**20:.1f} MiB |",
         f"| on, scraped | {wall_on * 1e3:.0f} ms | {rss_on / 2**20:.1f} MiB |",
         "",
         f"Round-time ratio on/off: **{wall_on / wall_off:.3f}** (ratio of the medians; per pair: "
         + ", ".join(f"{r:.3f}" for r in ratios) + ").",
         "", "<!-- /console -->"]
    return L


# Flower's upload per node per round at 10^6 parameters (1,004,417), 4 nodes, measured by the
# full `scripts/bench` run of 2026-11-25 (docs/BENCHMARKS.md, section 1): without and with its
# SecAgg+. Used when run/bench/results.json holds no Flower run of that configuration.
FLOWER_1E6 = {"params": 1_004_417, "plain": 4.1e6, "secagg": 8.1e6, "when": "2026-11-25"}
AUC_GOAL = 0.005


def flower_bytes_per_param(root):
    """Flower's measured upload per node per round divided by the parameters, at 10^6 and 4
    nodes, without and with SecAgg+: from run/bench/results.json when it holds those runs, else
    the recorded figures (FLOWER_1E6); and where they come from."""
    found, source = {}, f"the full `scripts/bench` run of {FLOWER_1E6['when']}, section 1 above"
    results = root / "results.json"
    if results.exists():
        for row in json.loads(results.read_text()):
            c = row["cfg"]
            if c["nodes"] == 4 and c["model"] == "1e6" and "flower" in row:
                found["secagg" if c["secagg"] else "plain"] = row["flower"]["up_per_node_round"] / c["params"]
    if len(found) == 2:
        return found, "run/bench/results.json"
    return {k: FLOWER_1E6[k] / FLOWER_1E6["params"] for k in ("plain", "secagg")}, source


def quantized_section(auc_rows, upload_rows, flower, flower_source, bits, clip, rounds):
    """Lines of the page's section on quantised uploads: the pooled AUC of quantised against
    fixed-point training on the demo data, and each model's upload per node against Flower's."""
    L = ["<!-- quantized -->", "",
         "### Quantised uploads (issue 18): bytes against Flower's, AUC against the fixed point",
         "",
         f"medfed with secure aggregation, 4 hospitals (the demo's data, one node per hospital), "
         f"`update_clip = {clip:g}` in both runs of a pair; quantised: `upload_bits = {bits}` "
         f"({32 // bits} values a word, {Quantized_levels(bits, 4)} levels for 4 hospitals). "
         "Upload: each node's egress log over the training rounds (every message it sent: keys, "
         "shares, masked input, signature, unmasking shares), per node and round, with "
         "`task.evaluate_every = \"final\"`, so that training rounds carry only the update, as "
         "Flower's do (its runs evaluate nothing during training, `fraction_evaluate = 0`); with "
         "the default schedule each round's masked input also carries the evaluation and audit "
         "counts (39 kB on the demo's data). Flower's upload is "
         f"its measured bytes per parameter at 10^6 parameters, from {flower_source} (Flower was "
         "not rerun for this section), times the model's parameters: "
         f"{flower['plain']:.2f} B/param without secure aggregation, {flower['secagg']:.2f} with "
         "its SecAgg+. Goal: at most ¼ of Flower's.",
         "",
         "| Model (params) | medfed fixed point | medfed quantised | quantised / fixed | Flower (plain) | "
         "quantised / Flower plain | Flower (SecAgg+) | quantised / Flower SecAgg+ |",
         "|---|---|---|---|---|---|---|---|"]
    for r in upload_rows:
        p = r["params"]
        fp, fs = flower["plain"] * p, flower["secagg"] * p
        q, f = r["quantized"], r["fixed"]
        L.append(f"| {r['model']} ({p:,}) | {fmt_bytes(f)} | {fmt_bytes(q)} | {q / f:.3f} | "
                 f"{fmt_bytes(fp)} | **{q / fp:.3f}** | {fmt_bytes(fs)} | **{q / fs:.3f}** |")
    L += ["",
          f"Pooled held-out AUC of the final model, demo MLP, {rounds} rounds of FedAvg (2 local "
          "epochs, learning rate 0.05, batch 32), fixed point against quantised, each pair from "
          f"the same initial model and data; goal: within {AUC_GOAL}.",
          "",
          "| Repeat | fixed point AUC | quantised AUC | difference |",
          "|---|---|---|---|"]
    for i, r in enumerate(auc_rows):
        L.append(f"| {i + 1} | {r['fixed']:.4f} | {r['quantized']:.4f} | {r['quantized'] - r['fixed']:+.4f} |")
    if auc_rows:
        mf = sum(r["fixed"] for r in auc_rows) / len(auc_rows)
        mq = sum(r["quantized"] for r in auc_rows) / len(auc_rows)
        L.append(f"| mean | {mf:.4f} | {mq:.4f} | **{mq - mf:+.4f}** |")
    L += ["", "<!-- /quantized -->"]
    return L


def Quantized_levels(bits, nodes):
    """L = 2^b − 1 for the largest b with nodes · L < 2^bits (protocol's Quantized::fit)."""
    b = max(b for b in range(0, bits) if nodes * ((1 << b) - 1) < (1 << bits))
    return (1 << b) - 1


def run_quantized(out, command):
    """Quantised uploads against the fixed point (the AUC on the demo model) and against
    Flower (the upload per node), medfed with secure aggregation on 4 nodes; splices the
    page's section on them."""
    root = REPO / "run" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    bits = int(os.environ.get("BENCH_UPLOAD_BITS", "8"))
    clip = float(os.environ.get("BENCH_UPDATE_CLIP", "64"))
    auc_rounds = int(os.environ.get("BENCH_AUC_ROUNDS", "20"))
    data_dir, names, width = prepare_data(4, root)

    def cfg_for(model, rounds, upload, tag, evaluate_every=None):
        return dict(id=f"quant-{tag}-{model}-{'q' + str(upload) if upload else 'fixed'}", nodes=4,
                    hidden=MODELS[model], secagg=True, rounds=rounds, epochs=2, lr=0.05, batch=32,
                    shares=4, threshold=3, timeout=1800, model=model,
                    params=param_count(width, MODELS[model]), update_clip=clip, upload_bits=upload,
                    evaluate_every=evaluate_every)

    auc_rows, upload_rows = [], []
    for repeat in range(int(os.environ.get("BENCH_REPEATS", "3"))):
        row = {}
        for upload in (None, bits):
            cfg = cfg_for("demo", auc_rounds, upload, f"auc{repeat}")
            log(f"medfed {cfg['id']}")
            figures = run_medfed(cfg, data_dir, names, root, 19300 + 10 * len(auc_rows))
            log("  ", json.dumps({k: figures[k] for k in ("auc", "up_per_node_round", "wall_per_round")}))
            row["quantized" if upload else "fixed"] = figures["auc"]
        auc_rows.append(row)
    for model in os.environ.get("BENCH_MODELS", "1e6,1e7").split(","):
        row = dict(model=model, params=param_count(width, MODELS[model]))
        for upload in (None, bits):
            # Like for like with Flower's runs, which evaluate nothing during training: the
            # training rounds release only the update (the final model is still evaluated).
            cfg = cfg_for(model, int(os.environ.get("BENCH_ROUNDS", "1")), upload, "up", "final")
            log(f"medfed {cfg['id']}")
            figures = run_medfed(cfg, data_dir, names, root, 19500 + 10 * len(upload_rows))
            log("  ", json.dumps({k: figures[k] for k in ("auc", "up_per_node_round", "wall_per_round")}))
            row["quantized" if upload else "fixed"] = figures["up_per_node_round"]
        upload_rows.append(row)
    flower, source = flower_bytes_per_param(root)
    (root / "quantized.json").write_text(json.dumps(dict(auc=auc_rows, upload=upload_rows, flower=flower,
                                                         source=source), indent=1))
    section = quantized_section(auc_rows, upload_rows, flower, source, bits, clip, auc_rounds)
    print("\n".join(section[2:-2]))
    written = [f"Written by `{command}` on "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    splice_section(out, "quantized", section[:-1] + written + section[-1:])
    log(f"wrote {out}")


def splice_section(page, tag, section):
    """Puts `section` (between `<!-- tag -->` markers) into the page text: in place of its
    earlier version, or before section 2."""
    text = page.read_text()
    block = "\n".join(section)
    match = re.search(rf"<!-- {tag} -->.*?<!-- /{tag} -->", text, re.S)
    if match:
        text = text[:match.start()] + block + text[match.end():]
    else:
        anchor = text.index("## 2. ")
        text = text[:anchor] + block + "\n\n" + text[anchor:]
    page.write_text(text)


def run_figures(mon, t0, t1, rounds, nodes, t_launch, sent, received, auc):
    """The figures of one run, the same way for both frameworks: the timed window is [t0, t1]
    (start of round 1 to end of the last round); `sent`/`received` are the nodes' bytes in it
    (`received` None where not measured)."""
    return {
        "wall_per_round": (t1 - t0) / rounds,
        "coord_cpu_per_round": mon.cpu_between("coordinator", t0, t1) / rounds,
        "coord_cpu_total": mon.cpu_total("coordinator"),
        "coord_peak_rss": mon.peak_rss("coordinator"),
        "node_cpu_per_round": mon.cpu_between("nodes", t0, t1) / rounds / nodes,
        "up_per_node_round": sent / nodes / rounds,
        "down_per_node_round": None if received is None else received / nodes / rounds,
        "auc": auc,
        "total_wall": time.time() - t_launch,
        "processes": mon.processes("coordinator"),
    }


# ---- Flower -----------------------------------------------------------------------------------

def run_flower(cfg, data_dir, root, base_port):
    nodes, secagg, rounds = cfg["nodes"], cfg["secagg"], cfg["rounds"]
    run = root / f"flower-{cfg['id']}"
    if run.exists():
        shutil.rmtree(run)
    (run / "logs").mkdir(parents=True)
    home = run / "flwr-home"
    home.mkdir()
    # Flower 1.42 serves the Fleet, Control and ServerAppIo APIs on one HTTP port.
    control = fleet = base_port
    (home / "config.toml").write_text(f"""[superlink]
default = "bench"

[superlink.bench]
address = "127.0.0.1:{control}"
insecure = true
""")
    env = dict(os.environ, FLWR_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=f"{VENV}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    mon = Monitor()
    link = subprocess.Popen([VENV / "flower-superlink", "--insecure", "--host", "127.0.0.1",
                             "--port", str(fleet)],
                            stdout=open(run / "logs/superlink.out", "w"), stderr=subprocess.STDOUT,
                            env=env, cwd=run)
    mon.watch("coordinator", [link.pid])
    relay = base_port + 9
    proxy = CountingProxy(relay, fleet)
    supernodes = []
    for i in range(nodes):
        supernodes.append(subprocess.Popen(
            [VENV / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{relay}",
             "--host", "127.0.0.1", "--port", str(base_port + 10 + i),
             "--node-config", f"partition-id={i}"],
            stdout=open(run / f"logs/supernode-{i}.out", "w"), stderr=subprocess.STDOUT, env=env, cwd=run))
    mon.watch("nodes", [p.pid for p in supernodes])

    mon.start()
    out = run / "result.json"
    app = Path(__file__).resolve().parent / "flowerapp"
    overrides = (f"num-rounds={rounds} local-epochs={cfg['epochs']} learning-rate={cfg['lr']} "
                 f"batch-size={cfg['batch']} hidden='{','.join(map(str, cfg['hidden']))}' seed=42 "
                 f"secagg={'true' if secagg else 'false'} num-nodes={nodes} num-shares={cfg['shares']} "
                 f"threshold={cfg['threshold']} data-dir='{data_dir}' out='{out}' "
                 f"init='{cfg.get('init', '')}'")
    t_launch = time.time()
    try:
        wait_port(fleet, 120)
        subprocess.run([VENV / "flwr", "run", str(app), "bench", "--run-config", overrides],
                       check=True, env=env, cwd=run, stdout=open(run / "logs/flwr-run.out", "w"),
                       stderr=subprocess.STDOUT, timeout=120)
        deadline = time.time() + cfg["timeout"]
        while not out.exists() and time.time() < deadline:
            time.sleep(0.5)
            if link.poll() is not None:
                break
        time.sleep(0.5)
    finally:
        mon.stop()
        proxy.stop()
        for p in supernodes + [link]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in supernodes + [link]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        # Flower's SuperExec and app processes that outlive their parents (they exit by
        # themselves when they notice, but would compete for the CPU meanwhile).
        for group in ("coordinator", "nodes"):
            for pid in mon.series[group]:
                if proc_sample(pid) and ("flwr" in mon.cmds.get(pid, "") or "flower" in mon.cmds.get(pid, "")):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
    if not out.exists():
        sent = sum(p.read_text(errors="replace").count("Sent successfully")
                   for p in (run / "logs").glob("supernode-*.out"))
        expected = nodes * rounds * (4 if secagg else 1)
        raise RuntimeError(f"stopped unfinished after {(time.time() - t_launch) / 60:.1f} min (time budget): "
                           f"{sent} of the {expected} replies the nodes send in {rounds} rounds were in")
    res = json.loads(out.read_text())
    starts = {int(k): v for k, v in res["starts"].items()}
    ends = {int(k): v for k, v in res["ends"].items()}
    t0, t1 = starts[1], ends[rounds]
    sent, recv = proxy.between(t0, t1)
    return dict(run_figures(mon, t0, t1, rounds, nodes, t_launch, sent, recv, res["auc"]),
                params=res["params"], same_init=res.get("same_init", False))


# ---- the limits ------------------------------------------------------------------------------

def cargo_bench(args, log_path):
    """Runs `cargo bench ARGS`; returns its stdout (also written to log_path)."""
    env = dict(os.environ)
    env.pop("RUSTFLAGS", None)
    proc = subprocess.run(["cargo", "bench", *args], cwd=REPO, capture_output=True, text=True, env=env)
    Path(log_path).write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"cargo bench {' '.join(args)} failed; see {log_path}")
    return proc.stdout


def run_limits(root, quick):
    res = {}
    log("limits: secure-aggregation masking vs ChaCha20 keystream (protocol/benches/secagg.rs)")
    try:
        out = cargo_bench(["-p", "medfed-protocol", "--bench", "secagg", "--", "1e6x10"],
                          root / "secagg-bench.txt")
        m = re.search(r"masking 1e6 params 10 peers: handle_delivery (\d+) Melem/s \((\d+) MB/s\), "
                      r"mask loop (\d+) Melem/s \((\d+) MB/s\); keystream (\d+) MB/s; "
                      r"ratio ([\d.]+) handle_delivery, ([\d.]+) loop", out)
        if m:
            res["masking"] = dict(delivery_mbs=int(m.group(2)), loop_mbs=int(m.group(4)),
                                  keystream_mbs=int(m.group(5)), ratio_delivery=float(m.group(6)),
                                  ratio_loop=float(m.group(7)))
        u = re.search(r"unmasking 1e6 params 10 participants 0 dropout: finish ([\d.]+) ms", out)
        if u:
            res["unmask_ms"] = float(u.group(1))
        t = re.search(r"traffic 1e6 params 10 participants: .*total (\d+) B; plain f32 (\d+) B; ratio ([\d.]+) "
                      r"\(plain Contribution frame: (\d+) B\)", out)
        if t:
            res["traffic"] = dict(total=int(t.group(1)), f32=int(t.group(2)), plain_frame=int(t.group(4)))
    except RuntimeError as e:
        res["masking_error"] = str(e)
    log("limits: coordinator aggregation vs memcpy (protocol/benches/aggregate.rs)")
    try:
        res.update(run_aggregate(root))
    except RuntimeError as e:
        res["aggregate_error"] = str(e)
    log("limits: DP-SGD (node/benches/dp_sgd.rs) vs Opacus (scripts/bench_py/opacus_dp_sgd.py)")
    try:
        args = ["-p", "medfed-node", "--bench", "dp_sgd"]
        if quick:
            args += ["--", "--warm-up-time", "1", "--measurement-time", "2"]
        out = cargo_bench(args, root / "dp-sgd-bench.txt")
        m = re.search(r"dp_sgd step ([\d.]+) ms; sgd step ([\d.]+) ms; ratio ([\d.]+)", out)
        if m:
            res["medfed_dp"] = dict(dp_ms=float(m.group(1)), sgd_ms=float(m.group(2)))
    except RuntimeError as e:
        res["dp_error"] = str(e)
    op = subprocess.run([sys.executable, str(Path(__file__).parent / "opacus_dp_sgd.py")],
                        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    (root / "opacus.txt").write_text(op.stdout + op.stderr)
    m = re.search(r"dp_sgd (\d+) samples/s \(([\d.]+) ms/step\); plain sgd (\d+) samples/s", op.stdout)
    if m:
        res["opacus"] = dict(dp_sps=int(m.group(1)), dp_ms=float(m.group(2)), sgd_sps=int(m.group(3)))
    return res


# ---- the whole run ----------------------------------------------------------------------------

MODELS = {"demo": [32, 16], "1e6": [1024, 960], "1e7": [3150, 3150]}


def param_count(width, hidden):
    n, w = 0, width
    for h in hidden + [1]:
        n += w * h + h
        w = h
    return n


def fmt_bytes(b):
    if b is None:
        return "n/a"
    for unit, f in (("MB", 1e6), ("kB", 1e3)):
        if b >= f:
            return f"{b / f:.1f} {unit}"
    return f"{b:.0f} B"


def ratio(a, b, digits=2):
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--command", default="scripts/bench")
    ap.add_argument("--flower-only", default="",
                    help="comma-separated configuration ids: run only their Flower side, then rewrite the page")
    ap.add_argument("--limits-only", action="store_true",
                    help="run only the limit benchmarks, then rewrite the page from the saved results")
    ap.add_argument("--consistency-only", action="store_true",
                    help="run only medfed with secure aggregation (BENCH_NODES, BENCH_MODELS) and "
                         "rewrite the page's section on the consistency round's cost")
    ap.add_argument("--console-only", action="store_true",
                    help="run only medfed on the demo's task with the dashboard off and on, "
                         "alternately, and rewrite the page's section on the dashboard's cost")
    ap.add_argument("--quantized-only", action="store_true",
                    help="run only medfed with secure aggregation on 4 nodes, fixed point against "
                         "quantised uploads (BENCH_UPLOAD_BITS, default 8; BENCH_UPDATE_CLIP, default "
                         "64): the pooled AUC on the demo model (BENCH_AUC_ROUNDS, default 20; "
                         "BENCH_REPEATS, default 3) and the upload per node (BENCH_MODELS, default "
                         "1e6,1e7; BENCH_ROUNDS, default 1) against Flower's")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the page from run/bench/results.json and limits.json")
    args = ap.parse_args()
    quick = os.environ.get("BENCH_QUICK") == "1"
    if args.limits_only:
        root = REPO / "run" / "bench"
        (root / "limits.json").write_text(json.dumps(run_limits(root, quick), indent=1))
        args.render_only = True
    if args.flower_only:
        # Runs the Flower side of configurations the budget skipped, into the saved results.
        root = REPO / "run" / "bench"
        rows = json.loads((root / "results.json").read_text())
        for row in rows:
            cfg = row["cfg"]
            if cfg["id"] not in args.flower_only.split(",") or "flower" in row:
                continue
            data_dir, _, _ = prepare_data(cfg["nodes"], root)
            log(f"flower {cfg['id']}")
            try:
                r = int(os.environ.get("BENCH_ROUNDS", cfg["rounds"]))
                row["flower"] = run_flower(dict(cfg, timeout=1800, rounds=r), data_dir, root, 19900)
                row["flower"]["supplement"] = True
                row["flower"]["rounds"] = r
                row.pop("flower_error", None)
                log("  ", json.dumps(row["flower"]))
            except Exception as e:  # noqa: BLE001
                row["flower_error"] = str(e)
                log("  failed:", e)
            (root / "results.json").write_text(json.dumps(rows, indent=1, default=str))
        args.render_only = True
    if args.consistency_only:
        root = REPO / "run" / "bench"
        root.mkdir(parents=True, exist_ok=True)
        rows = []
        for nodes in [int(n) for n in os.environ.get("BENCH_NODES", "4,20").split(",")]:
            data_dir, names, width = prepare_data(nodes, root)
            for model in os.environ.get("BENCH_MODELS", "demo,1e6").split(","):
                shares = nodes if nodes <= 4 else 11
                cfg = dict(id=f"{nodes}n-{model}-secagg", nodes=nodes, hidden=MODELS[model], secagg=True,
                           rounds=int(os.environ.get("BENCH_ROUNDS", "3")), epochs=2, lr=0.05, batch=32,
                           shares=shares, threshold=(2 * shares) // 3 + 1, timeout=1200, model=model,
                           params=param_count(width, MODELS[model]))
                log(f"medfed {cfg['id']}")
                row = dict(cfg=cfg, medfed=run_medfed(cfg, data_dir, names, root, 19300 + 50 * len(rows)))
                log("  ", json.dumps(row["medfed"]["consistency"]))
                rows.append(row)
        (root / "consistency.json").write_text(json.dumps(rows, indent=1, default=str))
        written = ["", f"Written by `{args.command} --consistency-only` on "
                       f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
        section = consistency_section(rows)
        splice_section(Path(args.out), "consistency", section[:-1] + written + ["", section[-1]])
        aggregate = None
        if os.environ.get("BENCH_AGGREGATE", "1") == "1":
            log("decode + sum against memcpy (protocol/benches/aggregate.rs)")
            try:
                aggregate = run_aggregate(root).get("aggregate")
            except RuntimeError as e:
                log("  failed:", e)
        section = memory_section(rows, aggregate)
        print("\n".join(section[2:-2]))
        splice_section(Path(args.out), "memory", section[:-1] + written + ["", section[-1]])
        log(f"wrote {args.out}")
        return
    if args.quantized_only:
        run_quantized(Path(args.out), f"{args.command} --quantized-only")
        return
    if args.console_only:
        root = REPO / "run" / "bench"
        root.mkdir(parents=True, exist_ok=True)
        data_dir, names, width = prepare_data(4, root)
        rounds = int(os.environ.get("BENCH_ROUNDS", "150"))
        pairs = []
        for repeat in range(int(os.environ.get("BENCH_REPEATS", "5"))):
            pair = {}
            for dashboard in (False, True):
                cfg = dict(id=f"console-{'on' if dashboard else 'off'}-{repeat}", nodes=4,
                           hidden=MODELS["demo"], secagg=True, rounds=rounds, epochs=2, lr=0.05,
                           batch=32, shares=4, threshold=3, timeout=1200, model="demo",
                           params=param_count(width, MODELS["demo"]), dashboard=dashboard)
                log(f"medfed {cfg['id']}")
                figures = run_medfed(cfg, data_dir, names, root, 19300 + 10 * len(pairs))
                figures.pop("consistency", None)
                log("  ", json.dumps(figures))
                pair["on" if dashboard else "off"] = figures
            pairs.append(pair)
        (root / "console.json").write_text(json.dumps(pairs, indent=1, default=str))
        section = console_section(pairs, rounds)
        print("\n".join(section[2:-2]))
        written = ["", f"Written by `{args.command} --console-only` on "
                       f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
        splice_section(Path(args.out), "console", section[:-1] + written + ["", section[-1]])
        log(f"wrote {args.out}")
        return
    if args.render_only:
        root = REPO / "run" / "bench"
        rows = json.loads((root / "results.json").read_text())
        rows.sort(key=lambda r: (r["cfg"]["nodes"], r["cfg"]["params"], r["cfg"]["secagg"]))
        meta = json.loads((root / "meta.json").read_text())
        write_markdown(Path(args.out), meta["command"], rows, json.loads((root / "limits.json").read_text()),
                       meta["rounds"], meta["quick"], meta["elapsed"], meta.get("when"), meta.get("notes", []))
        return
    rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
    budget = 60 * float(os.environ.get("BENCH_FLOWER_BUDGET_MIN", "12" if quick else "100"))
    root = REPO / "run" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    began = time.time()
    node_counts = [4] if quick else [4, 20]
    models = ["demo"] if quick else ["demo", "1e6"]
    if os.environ.get("BENCH_NODES"):
        node_counts = [int(n) for n in os.environ["BENCH_NODES"].split(",")]
    if os.environ.get("BENCH_MODELS"):
        models = os.environ["BENCH_MODELS"].split(",")
    rows = []
    flower_time = 0.0
    port = 19300
    data = {n: prepare_data(n, root) for n in node_counts}
    # Most telling first: the Flower runs stop being started when their budget is spent.
    order = []
    for m in models:
        for n in node_counts:
            order.append((n, m, False))
            if n == min(node_counts):
                order.append((n, m, True))
    order += [(n, m, True) for m in models for n in node_counts if n != min(node_counts)]
    for nodes, model, secagg in order:
        data_dir, names, width = data[nodes]
        shares = nodes if nodes <= 4 else 11
        threshold = (2 * shares) // 3 + 1
        cfg = dict(id=f"{nodes}n-{model}-{'secagg' if secagg else 'plain'}", nodes=nodes,
                   hidden=MODELS[model], secagg=secagg, rounds=rounds, epochs=2, lr=0.05, batch=32,
                   shares=shares, threshold=threshold, timeout=1200, model=model,
                   params=param_count(width, MODELS[model]))
        row = dict(cfg=cfg)
        log(f"medfed {cfg['id']}")
        port += 50
        try:
            row["medfed"] = run_medfed(cfg, data_dir, names, root, port)
            init = root / f"medfed-{cfg['id']}" / "coordinator" / "checkpoints" / "round-00000.safetensors"
            if init.exists():
                cfg["init"] = str(init)
            log("  ", json.dumps(row["medfed"]))
        except Exception as e:  # noqa: BLE001
            row["medfed_error"] = str(e)
            log("  failed:", e)
        left = budget - flower_time
        if left <= 0:
            row["flower_error"] = (f"not run: the Flower runs had used their time budget "
                                   f"({budget / 60:.0f} min, BENCH_FLOWER_BUDGET_MIN)")
        else:
            log(f"flower {cfg['id']} (budget left {left / 60:.1f} min)")
            t = time.time()
            try:
                cap = 60 * float(os.environ.get("BENCH_FLOWER_RUN_MAX_MIN", "40"))
                row["flower"] = run_flower(dict(cfg, timeout=min(max(left, 300), cap)), data_dir, root, port + 1)
                log("  ", json.dumps(row["flower"]))
            except Exception as e:  # noqa: BLE001
                row["flower_error"] = str(e)
                log("  failed:", e)
            flower_time += time.time() - t
        rows.append(row)
        (root / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    # Table order: by nodes, model, then secure aggregation.
    rows.sort(key=lambda r: (r["cfg"]["nodes"], r["cfg"]["params"], r["cfg"]["secagg"]))
    limits = run_limits(root, quick) if os.environ.get("BENCH_LIMITS", "1") == "1" else {}
    (root / "limits.json").write_text(json.dumps(limits, indent=1))
    (root / "meta.json").write_text(json.dumps(dict(
        command=args.command, rounds=rounds, quick=quick, elapsed=time.time() - began,
        when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))))
    write_markdown(Path(args.out), args.command, rows, limits, rounds, quick, time.time() - began)
    log(f"wrote {args.out}")
    if os.environ.get("BENCH_QUANTIZED", "1") == "1" and not quick:
        # With the Flower runs just saved, its bytes per parameter come from this run.
        run_quantized(Path(args.out), args.command)


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1e6
    import flwr
    import torch
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GB RAM; Python {sys.version.split()[0]}, "
            f"flwr {flwr.__version__}, torch {torch.__version__} (CPU), medfed's libtorch 2.13.0 (CPU)")


def write_markdown(path, command, rows, limits, rounds, quick, elapsed, when=None, notes=()):
    L = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(f"Written by `{command}` "
      f"on {when or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {elapsed / 60:.0f} min; "
      "every figure below comes from that one run on one machine" + (", except as noted just below" if notes else "")
      + ". Rerun it to refresh this page.")
    w("")
    for note in notes:
        w(note)
        w("")
    w(f"Machine: {machine()}. The machine was shared with other work while it ran (load from "
      "other processes), so absolute times are noisy; ratios of figures measured in the same run "
      "are the figures to read.")
    w("")
    w("## 1. medfed against Flower on the same federated task")
    w("")
    w("The task is the demo's: the UCI Heart Disease data split by hospital (4 nodes: one per "
      "hospital; 20 nodes: each hospital's rows dealt round-robin into 8, 7, 1 and 4 shards for "
      "Cleveland, Hungary, Switzerland and VA Long Beach), each node holding out 25 % of its rows "
      "with medfed's own split (seed 1; Flower's nodes get exactly the same rows, written out by "
      "`medfed-bench-split`, which calls the node's own split), the features standardised with the "
      "pooled training-split mean and standard deviation (medfed computes them in its federated "
      "statistics round; Flower's nodes get them precomputed), and an MLP with ReLUs (the demo's "
      "18-32-16-1, 1 153 parameters, and 18-1024-960-1, 1 004 417 parameters) starting from the "
      "same weights (medfed draws them uniform in ±1/√fan_in, as PyTorch's `nn.Linear` does; "
      "Flower's ServerApp loads medfed's round-0 checkpoint), "
      f"trained by FedAvg over every node for {rounds} rounds of 2 local epochs of plain SGD, "
      "learning rate 0.05, batch size 32, binary cross-entropy. One torch thread per node in both "
      "(`threads = 1` in medfed's node.toml; `torch.set_num_threads(1)` and OMP_NUM_THREADS=1 for "
      "Flower). No differential privacy in either (Flower has no DP accountant in this setup). "
      "Everything runs on 127.0.0.1, one process per node.")
    w("")
    w("- **medfed**: `medfed-coordinator` and one `medfed-node` per node, QUIC with mutual TLS 1.3 "
      "(always on). Secure aggregation: medfed's SecAgg/SecAgg+ (`[secure_aggregation] "
      "enabled`); each node pairs with every other (4 nodes) or with 10 neighbours (20 nodes), "
      "threshold ⌊2h/3⌋+1 of its h holders (3 of 4, 8 of 11). With it off, the coordinator sees "
      "each node's figures.")
    w("- **Flower** 1.42, Deployment Engine: `flower-superlink --insecure` (state in memory, its "
      "default), one `flower-supernode "
      "--insecure` per node and `flwr run` (the app is `scripts/bench_py/flowerapp`: a "
      "`ServerApp` with `LegacyContext` + `DefaultWorkflow` and `FedAvg`, a `ClientApp` with a "
      "`NumPyClient`). **No TLS** for Flower (`--insecure`); medfed always pays for mTLS. Secure "
      "aggregation: `SecAggPlusWorkflow(num_shares, reconstruction_threshold)` with the same "
      "shares and threshold as medfed, and `secaggplus_mod` on the ClientApp. Flower 1.42 starts a "
      "fresh `flwr-clientapp` process for every message a node handles (and SecAgg+ sends four "
      "per round), and the ClientApp imports torch each time: that is how its Deployment Engine "
      "runs and is counted in its times.")
    w("")
    w("How each figure is measured (the same way for both):")
    w("")
    w("- **Wall-clock per round**: from the start of round 1 to the end of the last round, "
      "divided by the rounds; start-up, connection and (for medfed) the federated statistics "
      "round are excluded. medfed: the coordinator's `round applied` log lines (end time and "
      "`seconds` of each round); Flower: timestamps the ServerApp's strategy records in "
      "`configure_fit` of round 1 and after `aggregate_fit` of the last round.")
    w("- **Coordinator CPU per round**: CPU time (user + system, from `/proc/PID/stat`, polled "
      "every 0.1 s, in 10 ms ticks, so figures of a few hundredths are coarse) the coordinator's "
      "processes used in that same window, divided by the rounds. "
      "medfed: `medfed-coordinator`. Flower: `flower-superlink` and all its descendants (the "
      "`flwr-serverapp` process that runs the ServerApp and the SuperExec that starts it).")
    w("- **Coordinator peak RSS**: the sum over those processes of their peak resident set "
      "(`VmHWM` in `/proc/PID/status`) over the whole run.")
    w("- **Upload per node per round**: what a node sends the coordinator in the timed rounds, "
      "averaged over nodes and rounds. medfed: each node's egress log (`medfed-node egress`: every "
      "framed message it sent, without QUIC/TLS overhead), training rounds only. Flower: the bytes "
      "the SuperNodes send through a counting TCP relay the harness puts between them and the "
      "SuperLink (HTTP requests with their headers, the nodes' polling included; it adds one "
      "local hop to Flower's path). Download (Flower only: the relay's other direction) is given "
      "for reference; medfed's nodes do not log what they receive.")
    w("- **Final AUC**: the pooled held-out AUC of the final global model over every node's "
      "held-out rows, from 1000-bin per-label score histograms (medfed's "
      "`protocol/src/evaluation.rs`). medfed's coordinator computes it from the summed counts "
      "after the last round; Flower's ServerApp computes it with the same formula on the same "
      "rows after the last round (outside the timed window).")
    w("")
    w("| nodes | model (params) | secure aggregation | framework | wall s/round | coordinator CPU s/round | "
      "coordinator peak RSS | upload /node/round | download /node/round | final AUC |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    slower = []
    for row in rows:
        c = row["cfg"]
        head = (f"| {c['nodes']} | {c['model']} ({c['params']:,}) | "
                f"{'on' if c['secagg'] else 'off'} |")
        m, f = row.get("medfed"), row.get("flower")
        for name, r, err in (("medfed", m, row.get("medfed_error")), ("Flower", f, row.get("flower_error"))):
            if r:
                fewer = r.get("rounds", c["rounds"]) != c["rounds"]
                auc = f"{r['auc']:.4f}" + (f" (after {r['rounds']} round{'s' if r['rounds'] > 1 else ''})" if fewer else "")
                w(f"{head} {name} | {r['wall_per_round']:.3f} | {r['coord_cpu_per_round']:.3f} | "
                  f"{r['coord_peak_rss'] / 1e6:.0f} MB | {fmt_bytes(r['up_per_node_round'])} | "
                  f"{fmt_bytes(r['down_per_node_round'])} | {auc} |")
            else:
                w(f"{head} {name} | {err} | | | | | |")
        if m and f:
            w(f"{head} **medfed / Flower** | **{ratio(m['wall_per_round'], f['wall_per_round'], 3)}** | "
              f"**{ratio(m['coord_cpu_per_round'], f['coord_cpu_per_round'], 3)}** | "
              f"**{ratio(m['coord_peak_rss'], f['coord_peak_rss'], 3)}** | "
              f"**{ratio(m['up_per_node_round'], f['up_per_node_round'])}** | – | "
              + (f"**{m['auc'] - f['auc']:+.4f}** (difference) |"
                 if f.get("rounds", c["rounds"]) == c["rounds"] else "– (not the same rounds) |"))
            for key, what in (("wall_per_round", "wall-clock per round"),
                              ("coord_cpu_per_round", "coordinator CPU"),
                              ("coord_peak_rss", "coordinator peak RSS"),
                              ("up_per_node_round", "upload per node")):
                if m[key] > f[key]:
                    slower.append(f"{c['id']}: {what} ({m[key] / f[key]:.2f}×)")
    w("")
    late = [r["cfg"]["id"] for r in rows if r.get("flower", {}).get("supplement")]
    if late:
        w(f"Flower's side of {', '.join(late)} was run right after the main run, on the same machine, "
          f"by `.deps/bench-venv/bin/python scripts/bench_py/harness.py --flower-only "
          f"{','.join(late)}` (the main run's Flower time budget had been spent).")
        w("")
    w("Ratios are medfed's figure divided by Flower's (below 1: medfed is faster or smaller). "
      "Raw logs and per-run JSON: `run/bench/`.")
    w("")
    if slower:
        w("Where medfed's figure is above Flower's: " + "; ".join(slower) + ". See *Findings*.")
        w("")
    section = consistency_section(rows)
    if section:
        L.extend(section)
        w("")
    section = memory_section(rows, limits.get("aggregate"))
    if section:
        L.extend(section)
        w("")
    w("## 2. medfed against the machine's limits")
    w("")
    w("| what | medfed | limit | medfed / limit |")
    w("|---|---|---|---|")
    mk = limits.get("masking")
    if mk:
        w(f"| SecAgg masking, 10^6 params, 10 peers (`handle_delivery`: decrypt shares, self-mask + one "
          f"pairwise mask per peer) | {mk['delivery_mbs']} MB/s of mask | ChaCha20 keystream {mk['keystream_mbs']} MB/s "
          f"(`crypto::keystream`, same bytes, fresh keys) | {mk['ratio_delivery']:.2f} |")
        w(f"| SecAgg masking loop alone (X25519 + HKDF + `add_mask` per peer) | {mk['loop_mbs']} MB/s | "
          f"keystream {mk['keystream_mbs']} MB/s | {mk['ratio_loop']:.2f} |")
    else:
        w(f"| SecAgg masking | {limits.get('masking_error', 'not measured')} | | |")
    ag = limits.get("aggregate")
    if ag:
        faults = (f" ({ag['faults_reused']} minor page faults a round)" if "faults_reused" in ag else "")
        faults_fresh = (f" ({ag['faults_fresh']} minor page faults a round)" if "faults_fresh" in ag else "")
        w(f"| Coordinator secure aggregation, {ag['nodes']} nodes × 10^6 words (`ExpectShares::finish_into` + "
          f"`ExpectMaskedInputs::handle_input`, summing into the previous round's buffer)"
          f"{faults} | {ag['handle']:.2f} GB/s of updates summed | `copy_from_slice` of the same bytes "
          f"{ag['memcpy']:.2f} GB/s | {ag['ratio']:.2f} |")
        w(f"| … into a fresh sum each round (`ExpectShares::finish`){faults_fresh} | "
          f"{ag['fresh']:.2f} GB/s | memcpy {ag['memcpy']:.2f} GB/s | {ag['ratio_fresh']:.2f} |")
        w(f"| … from the bytes received: each node's `SecAggInputChunk` pieces read in place from their frames "
          f"(`codec::InputPieceFrame`) and summed from those bytes (`handle_input_chunk`), previous round's buffer "
          f"| {ag['decode']:.2f} GB/s | memcpy {ag['memcpy']:.2f} GB/s | {ag['ratio_decode']:.2f} |")
        if "ratio_decode_fresh" in ag:
            w(f"| … the same into a fresh sum each round, the coordinator's own path "
              f"({ag['faults_decode_fresh']} minor page faults a round) | {ag['decode_fresh']:.2f} GB/s | "
              f"memcpy {ag['memcpy']:.2f} GB/s | {ag['ratio_decode_fresh']:.2f} |")
    else:
        w(f"| Coordinator aggregation | {limits.get('aggregate_error', 'not measured')} | | |")
    ap_ = limits.get("aggregate_plain")
    if ap_:
        w(f"| Coordinator plain aggregation (`add_into`: f32 figures into the f64 sum) | {ap_['add']:.2f} GB/s | memcpy {ap_['memcpy']:.2f} GB/s | "
          f"{ap_['ratio']:.2f} |")
    if limits.get("unmask_ms") is not None:
        w(f"| Coordinator unmasking, 10 nodes × 10^6 params (`ExpectUnmasking::finish`, no dropout) | "
          f"{limits['unmask_ms']:.1f} ms a round | – | – |")
    md, op = limits.get("medfed_dp"), limits.get("opacus")
    if md and op:
        sps = 256 / (md["dp_ms"] / 1e3)
        w(f"| DP-SGD, MLP 18-32-16-1, expected batch 256 (Poisson), σ = 1, C = 1, 1 thread "
          f"(`node/benches/dp_sgd.rs`) | {sps:.0f} samples/s ({md['dp_ms']:.2f} ms/step) | Opacus "
          f"{op['dp_sps']} samples/s ({op['dp_ms']:.2f} ms/step), same MLP, sampling, σ, C, lr, thread | "
          f"{sps / op['dp_sps']:.2f} |")
        w(f"| Plain SGD, same MLP, batch 256, 1 thread (reference) | {256 / (md['sgd_ms'] / 1e3):.0f} samples/s | "
          f"PyTorch {op['sgd_sps']} samples/s | {256 / (md['sgd_ms'] / 1e3) / op['sgd_sps']:.2f} |")
    else:
        w(f"| DP-SGD vs Opacus | {limits.get('dp_error', 'not measured')} | | |")
    tr = limits.get("traffic")
    if tr:
        w("")
        w(f"Secure aggregation's traffic, 10^6 params, 10 participants: {tr['total']:,} B per node per round "
          f"(all four SecAgg messages) against {tr['f32']:,} B for a bare f32 vector and "
          f"{tr['plain_frame']:,} B for medfed's plain contribution frame (f32 figures).")
    w("")
    w("Bench outputs: `run/bench/secagg-bench.txt`, `aggregate-bench.txt`, `dp-sgd-bench.txt`, "
      "`opacus.txt`.")
    w("")
    findings = Path(__file__).with_name("FINDINGS.md")
    if findings.exists():
        w(findings.read_text().strip())
        w("")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
