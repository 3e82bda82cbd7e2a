#!/usr/bin/env python3
"""Writes protocol/tests/vectors/pld_vectors.json: reference values from Google's dp_accounting.

The PLD accountant in protocol/src/pld/ (composed by protocol/src/accounting.rs) follows
dp_accounting's privacy loss distributions; its tests check every case in the JSON this script
writes to within 1e-3 relative, and that the RDP accountant's epsilon is never below it.

Re-run (dp_accounting pulls in numpy, scipy and friends; nothing else is needed):

    python3 -m venv /tmp/pld && /tmp/pld/bin/pip install dp-accounting==0.6.0
    /tmp/pld/bin/python scripts/pld_vectors.py

Three groups of cases, all under add-or-remove adjacency at dp_accounting's default grid of
1e-4 and pessimistic estimates:

- subsampled_gaussian: `steps` Poisson-subsampled Gaussian steps, composed by dp_accounting's own
  PLDAccountant (PoissonSampledDpEvent of a GaussianDpEvent, self-composed `steps` times). Cases
  whose epsilon is above MAX_EPSILON are left out: no budget spends that much, and their
  distributions run to millions of grid points.
- discrete_gaussian: `cells` integers with discrete Gaussian noise, one patient moving each by at
  most `sensitivity`: PLDAccountant has no event for it, so the script builds
  from_discrete_gaussian_mechanism(sigma, sensitivity, use_connect_dots=True) and self-composes it
  `cells` times (connect-the-dots, as for the Gaussian: tighter than the default privacy buckets).
- mixed: DP-SGD steps and discrete Gaussian counts together, listed as the releases a node's
  ledger holds. As medfed does, identical mechanisms are counted together and each distinct one
  is composed into the identity PLD in order of first appearance, one self-composition each.

Each release is written as medfed's `Mechanism` serialises (`{"kind": "subsampled_gaussian",
...}`), so the Rust tests read the cases as they are.
"""

import argparse
import importlib.metadata
import json
import math
import pathlib
import shlex
import sys
import time

from dp_accounting import dp_event
from dp_accounting import privacy_accountant
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "protocol" / "tests" / "vectors" / "pld_vectors.json"

DP_ACCOUNTING_VERSION = "0.6.0"

# dp_accounting's default value_discretization_interval, and medfed's DEFAULT_INTERVAL.
INTERVAL = 1e-4

QS = [0.01, 0.05, 0.18, 1.0]
SIGMAS = [0.6, 1.0, 2.0, 5.0]
STEPS = [1, 10, 240, 1000]
DELTAS = [1e-5, 1e-6]
MAX_EPSILON = 100.0

# (sigma, sensitivity, cells)
DISCRETE_CASES = [
    (0.8, 1, 1),
    (1.0, 1, 1),
    (1.0, 1, 10),
    (2.0, 3, 5),
    (4.0, 1, 9),
    (4.0, 1, 189),
    (1024.0, 256, 1),
    (1024.0, 256, 21),
    (10.0, 1, 100),
    (30.0, 2, 1000),
]


def sgd(q, sigma, steps):
    return {"kind": "subsampled_gaussian", "sample_rate": q, "noise_multiplier": sigma, "steps": steps}


def counts(sigma, sensitivity, cells):
    return {"kind": "discrete_gaussian", "sigma": sigma, "sensitivity": sensitivity, "cells": cells}


def demo(sigma, eval_sigma):
    """The demo's node: 20 rounds of 12 DP-SGD steps at q = 16/90; an evaluation release before
    every round and one at the end, with A = 3 audited attributes (3 + 2A = 9 count cells moved by
    1 at noise eval_sigma, and the loss cell moved by up to K = 256 at noise eval_sigma * K); and a
    statistics release, here a stand-in of 30 counts at noise 8."""
    releases = [counts(8.0, 1, 30)]
    evaluation = [counts(eval_sigma, 1, 9), counts(eval_sigma * 256, 256, 1)]
    for _ in range(20):
        releases += evaluation + [sgd(16 / 90, sigma, 12)]
    return releases + evaluation


MIXED_CASES = [
    ("demo, sigma 1.0, evaluation noise 4", demo(1.0, 4.0), [1e-5, 1e-6]),
    ("demo, sigma 1.2, evaluation noise 20", demo(1.2, 20.0), [1e-5]),
    ("demo, sigma 1.5, evaluation noise 20", demo(1.5, 20.0), [1e-5, 1e-6]),
    ("one step and one count", [sgd(0.05, 1.0, 1), counts(2.0, 1, 1)], [1e-5]),
    ("counts between rounds", [sgd(0.01, 0.8, 50), counts(5.0, 1, 7), sgd(0.01, 0.8, 50),
                               counts(5.0, 1, 7), counts(1280.0, 256, 2)], [1e-5, 1e-6]),
    ("full batch and counts", [sgd(1.0, 3.0, 10), counts(3.0, 2, 4)], [1e-5]),
    ("two sampling rates", [sgd(0.18, 2.0, 100), sgd(0.05, 1.0, 300), counts(10.0, 1, 50)],
     [1e-5]),
]


def subsampled_gaussian_pld(q, sigma):
    """What PLDAccountant composes for PoissonSampledDpEvent(q, GaussianDpEvent(sigma))."""
    return pld.from_gaussian_mechanism(
        standard_deviation=sigma,
        value_discretization_interval=INTERVAL,
        sampling_prob=q,
        neighboring_relation=privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE,
    )


def discrete_gaussian_pld(sigma, sensitivity):
    return pld.from_discrete_gaussian_mechanism(
        sigma,
        sensitivity=sensitivity,
        value_discretization_interval=INTERVAL,
        use_connect_dots=True,
    )


def merged(releases):
    """Identical mechanisms counted together, in order of first appearance (as medfed does)."""
    out = []
    for release in releases:
        key = {k: v for k, v in release.items() if k not in ("steps", "cells")}
        count = release.get("steps", release.get("cells"))
        for entry in out:
            if entry[0] == key:
                entry[1] += count
                break
        else:
            out.append([key, count])
    return out


def composed(releases):
    total = pld.identity(value_discretization_interval=INTERVAL)
    for key, count in merged(releases):
        if key["kind"] == "subsampled_gaussian":
            one = subsampled_gaussian_pld(key["sample_rate"], key["noise_multiplier"])
        else:
            one = discrete_gaussian_pld(key["sigma"], key["sensitivity"])
        total = total.compose(one.self_compose(count))
    return total


def accountant_epsilons(q, sigma, steps, deltas):
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=INTERVAL)
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    accountant.compose(event, steps)
    return [accountant.get_epsilon(delta) for delta in deltas]


def to_json(fixture):
    """Pretty JSON with one case per line, so that a re-run's diff shows which cases moved."""
    lines = []
    for key, value in fixture.items():
        if isinstance(value, list):
            rows = ",\n".join(f"    {json.dumps(row)}" for row in value)
            lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert json.loads(text) == fixture
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file to write")
    args = parser.parse_args()

    version = importlib.metadata.version("dp-accounting")
    if version != DP_ACCOUNTING_VERSION:
        sys.exit(f"dp-accounting {version} is installed; this script pins {DP_ACCOUNTING_VERSION}")

    started = time.time()
    gaussian_out, left_out = [], 0
    for q in QS:
        for sigma in SIGMAS:
            for steps in STEPS:
                for delta, eps in zip(DELTAS, accountant_epsilons(q, sigma, steps, DELTAS)):
                    if not eps <= MAX_EPSILON:
                        left_out += 1
                        continue
                    gaussian_out.append(
                        {"releases": [sgd(q, sigma, steps)], "delta": delta, "epsilon": eps}
                    )
                    # The same composition by hand, as the mixed cases are built.
                    by_hand = composed([sgd(q, sigma, steps)]).get_epsilon_for_delta(delta)
                    assert math.isclose(by_hand, eps, rel_tol=1e-9, abs_tol=1e-12), (by_hand, eps)

    discrete_out = []
    for sigma, sensitivity, cells in DISCRETE_CASES:
        releases = [counts(sigma, sensitivity, cells)]
        distribution = composed(releases)
        for delta in DELTAS:
            discrete_out.append(
                {
                    "releases": releases,
                    "delta": delta,
                    "epsilon": distribution.get_epsilon_for_delta(delta),
                }
            )

    mixed_out = []
    for name, releases, deltas in MIXED_CASES:
        distribution = composed(releases)
        for delta in deltas:
            mixed_out.append(
                {
                    "name": name,
                    "releases": releases,
                    "delta": delta,
                    "epsilon": distribution.get_epsilon_for_delta(delta),
                }
            )

    fixture = {
        "generator": "scripts/pld_vectors.py",
        "command": shlex.join(["python3", "scripts/pld_vectors.py"]),
        "dp_accounting_version": version,
        "numpy_version": importlib.metadata.version("numpy"),
        "scipy_version": importlib.metadata.version("scipy"),
        "value_discretization_interval": INTERVAL,
        "max_epsilon": MAX_EPSILON,
        "subsampled_gaussian": gaussian_out,
        "discrete_gaussian": discrete_out,
        "mixed": mixed_out,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(fixture))
    print(
        f"wrote {len(gaussian_out)} subsampled Gaussian ({left_out} above epsilon {MAX_EPSILON} "
        f"left out), {len(discrete_out)} discrete Gaussian and {len(mixed_out)} mixed cases to "
        f"{out} in {time.time() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
