#!/usr/bin/env python3
"""Writes protocol/tests/vectors/opacus_rdp.json: reference values from Opacus's RDP accountant.

The Rust accountant in protocol/src/privacy.rs is a port of Opacus's
opacus/accountants/analysis/rdp.py; its tests check every case in the JSON this script writes.

Re-run (needs numpy and scipy, not torch and not an installed opacus):

    python3 -m venv /tmp/pv && /tmp/pv/bin/pip install numpy scipy
    pip download --no-deps opacus==1.6.0 -d /tmp/opacus
    /tmp/pv/bin/python scripts/privacy_vectors.py /tmp/opacus/opacus-1.6.0-py3-none-any.whl

The wheel is only unzipped. rdp.py needs nothing beyond numpy and scipy, so it is loaded straight
from the extracted file with importlib. get_noise_multiplier (opacus/accountants/utils.py) cannot be
loaded that way: it imports the accountant classes and, through them, torch. Its bisection is
short, so `noise_multiplier` below restates it line for line over the loaded rdp.py functions
(what RDPAccountant.get_epsilon does with a one-entry history), and the script refuses to run if
the wheel's utils.py no longer contains the lines it restates.
"""

import argparse
import hashlib
import importlib.util
import json
import math
import pathlib
import shlex
import sys
import tempfile
import warnings
import zipfile

import numpy
import scipy

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "protocol" / "tests" / "vectors" / "opacus_rdp.json"

# RDPAccountant.DEFAULT_ALPHAS (opacus/accountants/rdp.py).
DEFAULT_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))

# opacus/accountants/utils.py, restated by `noise_multiplier`.
MAX_SIGMA = 1e6

# Lines of utils.py's get_noise_multiplier that `noise_multiplier` restates.
UTILS_LINES = [
    "MAX_SIGMA = 1e6",
    "sigma_low, sigma_high = 0, 10",
    "while eps_high > target_epsilon:",
    "sigma_high = 2 * sigma_high",
    "if sigma_high > MAX_SIGMA:",
    "while target_epsilon - eps_high > epsilon_tolerance:",
    "sigma = (sigma_low + sigma_high) / 2",
    "if eps < target_epsilon:",
    "return sigma_high",
]

QS = [0.001, 0.01, 0.04, 0.1, 0.5, 1.0]
SIGMAS = [0.5, 0.8, 1.0, 1.5, 3.0, 10.0]
STEPS = [1, 10, 100, 1000, 10000]
DELTAS = [1e-5, 1e-6]

# Published figures, kept in the fixture as well as in the Rust tests.
EXTRA_EPSILON_CASES = [
    (0.04, 1.5, 2250, 1e-5),  # Opacus/TF Privacy MNIST example: eps = 7.329...
    (1.0, 1.0, 1, 1e-5),  # one full-batch Gaussian mechanism
    (0.01, 1.1, 10000, 1e-5),
    (0.004, 1.1, 60000, 1e-5),
]

# (target_epsilon, delta, q, steps, epsilon_tolerance)
NOISE_CASES = [
    (8.0, 1e-5, 0.04, 2250, 0.01),  # 90 epochs at q = 0.04: sigma = 1.416...
    (1.0, 1e-5, 0.01, 1000, 0.01),
    (3.0, 1e-6, 0.001, 10000, 0.01),
    (0.5, 1e-5, 0.001, 100, 0.01),
    (2.0, 1e-5, 0.1, 100, 0.01),
    (10.0, 1e-6, 0.5, 10, 0.01),
    (1.0, 1e-5, 1.0, 1, 0.01),
    (4.0, 1e-5, 0.04, 2250, 0.001),
    (0.2, 1e-6, 0.01, 10000, 0.05),
]


def load_rdp(wheel, workdir):
    """Extracts the wheel into workdir and loads opacus/accountants/analysis/rdp.py alone."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(workdir)
    root = pathlib.Path(workdir)
    rdp_path = root / "opacus" / "accountants" / "analysis" / "rdp.py"
    spec = importlib.util.spec_from_file_location("opacus_rdp_analysis", rdp_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    utils = (root / "opacus" / "accountants" / "utils.py").read_text()
    missing = [line for line in UTILS_LINES if line not in utils]
    if missing:
        sys.exit(f"utils.py changed; re-check the restated bisection. Missing: {missing}")

    versions = [
        (root / d / "METADATA").read_text()
        for d in (p.name for p in root.iterdir())
        if d.startswith("opacus-") and d.endswith(".dist-info")
    ]
    version = next(
        line.split(":", 1)[1].strip()
        for line in versions[0].splitlines()
        if line.startswith("Version:")
    )
    return module, version, rdp_path.read_bytes()


def epsilon(rdp, q, sigma, steps, delta):
    """RDPAccountant with history [(sigma, q, steps)]: get_privacy_spent(delta=delta)."""
    curve = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=DEFAULT_ALPHAS)
    eps, order = rdp.get_privacy_spent(orders=DEFAULT_ALPHAS, rdp=curve, delta=delta)
    return float(eps), float(order)


def noise_multiplier(rdp, target_epsilon, delta, q, steps, epsilon_tolerance):
    """get_noise_multiplier(..., steps=steps, accountant="rdp"), restated from utils.py."""
    eps_high = float("inf")
    sigma_low, sigma_high = 0, 10
    while eps_high > target_epsilon:
        sigma_high = 2 * sigma_high
        eps_high = epsilon(rdp, q, sigma_high, steps, delta)[0]
        if sigma_high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")

    while target_epsilon - eps_high > epsilon_tolerance:
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon(rdp, q, sigma, steps, delta)[0]
        if eps < target_epsilon:
            sigma_high = sigma
            eps_high = eps
        else:
            sigma_low = sigma

    return float(sigma_high)


def epsilon_cases():
    """Every q and every sigma meet; steps and delta rotate so each value appears several times."""
    cases = []
    for i, q in enumerate(QS):
        for j, sigma in enumerate(SIGMAS):
            cases.append((q, sigma, STEPS[(i + j) % len(STEPS)], DELTAS[(i + j // 2) % 2]))
    return cases + EXTRA_EPSILON_CASES


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
    parser.add_argument("wheel", help="path to an opacus wheel (pip download --no-deps opacus)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file to write")
    args = parser.parse_args()

    # get_privacy_spent warns when the best order is an end of the list; that is fine here.
    warnings.simplefilter("ignore")
    wheel = pathlib.Path(args.wheel)
    with tempfile.TemporaryDirectory() as workdir:
        rdp, version, rdp_source = load_rdp(wheel, workdir)

        eps_out = []
        for q, sigma, steps, delta in epsilon_cases():
            eps, order = epsilon(rdp, q, sigma, steps, delta)
            assert math.isfinite(eps), (q, sigma, steps, delta)
            eps_out.append(
                {
                    "q": q,
                    "sigma": sigma,
                    "steps": steps,
                    "delta": delta,
                    "epsilon": eps,
                    "order": order,
                }
            )

        noise_out = []
        for target, delta, q, steps, tol in NOISE_CASES:
            sigma = noise_multiplier(rdp, target, delta, q, steps, tol)
            noise_out.append(
                {
                    "target_epsilon": target,
                    "delta": delta,
                    "q": q,
                    "steps": steps,
                    "epsilon_tolerance": tol,
                    "sigma": sigma,
                }
            )

    fixture = {
        "generator": "scripts/privacy_vectors.py",
        "command": shlex.join(["python3", "scripts/privacy_vectors.py", wheel.name]),
        "opacus_version": version,
        "opacus_wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "rdp_py_sha256": hashlib.sha256(rdp_source).hexdigest(),
        "numpy_version": numpy.__version__,
        "scipy_version": scipy.__version__,
        "orders": "RDPAccountant.DEFAULT_ALPHAS",
        "epsilon": eps_out,
        "noise_multiplier": noise_out,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(fixture))
    print(f"wrote {len(eps_out)} epsilon and {len(noise_out)} noise-multiplier cases to {out}")


if __name__ == "__main__":
    main()
