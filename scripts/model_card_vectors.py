#!/usr/bin/env python3
"""Writes audit/src/model_card/vectors.json: reference figures for the model card's maths.

audit/src/model_card/figures.rs computes the card's intervals and calibration from pooled score
histograms (the only form in which the coordinator sees held-out predictions). This script draws
deterministic synthetic scores (numpy's seeded PCG64), bins them into a 20-bin histogram per label
as the nodes do, and computes the reference figures independently of the Rust code, from the
patients expanded out of the histograms (each score the centre of its bin):

* AUC and its 95% interval: DeLong et al. (1988) by brute force over every positive/negative
  pair (placements V10, V01; Var = var(V10)/n1 + var(V01)/n0 with ddof=1), Wald, clipped to [0, 1].
* Sensitivity, specificity, PPV, NPV, accuracy at threshold 0.4 with statsmodels'
  `proportion_confint(method="wilson")`.
* Calibration slope: statsmodels GLM (Binomial, logit link) of the outcome on logit(score).
* Mean predicted risk, observed rate, the 10-bin reliability table and the ECE with numpy.

Re-run:

    python3 -m venv /tmp/mcv && /tmp/mcv/bin/pip install numpy scipy statsmodels
    /tmp/mcv/bin/python scripts/model_card_vectors.py
"""

import json
import pathlib

import numpy as np
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint

BINS = 20
THRESHOLD = 0.4
Z = 1.959963984540054

rng = np.random.Generator(np.random.PCG64(20240416))
pos_scores = rng.beta(4.0, 3.0, size=60)
neg_scores = rng.beta(2.0, 4.0, size=140)


def histogram(scores):
    bins = np.minimum((scores * BINS).astype(int), BINS - 1)
    return np.bincount(bins, minlength=BINS).astype(float)


positive = histogram(pos_scores)
negative = histogram(neg_scores)
centres = (np.arange(BINS) + 0.5) / BINS
flag_bin = int(THRESHOLD * BINS)  # bins from here on are flagged (edges are exact here)
tp, fn = positive[flag_bin:].sum(), positive[:flag_bin].sum()
fp, tn = negative[flag_bin:].sum(), negative[:flag_bin].sum()

# Patients expanded from the histograms: label and bin centre.
pos_x = np.repeat(centres, positive.astype(int))
neg_x = np.repeat(centres, negative.astype(int))
cmp = (pos_x[:, None] > neg_x[None, :]) + 0.5 * (pos_x[:, None] == neg_x[None, :])
auc = cmp.mean()
v10 = cmp.mean(axis=1)
v01 = cmp.mean(axis=0)
var = v10.var(ddof=1) / len(pos_x) + v01.var(ddof=1) / len(neg_x)
half = Z * np.sqrt(var)


def wilson(k, n):
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    return [k / n, float(low), float(high)]


y = np.concatenate([np.ones(len(pos_x)), np.zeros(len(neg_x))])
x = np.concatenate([pos_x, neg_x])
logit = np.log(x / (1 - x))
fit = sm.GLM(y, sm.add_constant(logit), family=sm.families.Binomial()).fit(tol=1e-14)

table = []
ece = 0.0
for b in range(10):
    lo, hi = b * BINS // 10, (b + 1) * BINS // 10
    count = positive[lo:hi].sum() + negative[lo:hi].sum()
    if count > 0:
        mean = float(((positive[lo:hi] + negative[lo:hi]) * centres[lo:hi]).sum() / count)
        observed = float(positive[lo:hi].sum() / count)
        ece += count / len(x) * abs(mean - observed)
    else:
        mean, observed = None, None
    table.append([float(count), mean, observed])

out = {
    "positive": positive.tolist(),
    "negative": negative.tolist(),
    "tp": float(tp),
    "fp": float(fp),
    "tn": float(tn),
    "fn_": float(fn),
    "auc": float(auc),
    "auc_low": float(max(0.0, auc - half)),
    "auc_high": float(min(1.0, auc + half)),
    "sensitivity": wilson(tp, tp + fn),
    "specificity": wilson(tn, tn + fp),
    "ppv": wilson(tp, tp + fp),
    "npv": wilson(tn, tn + fn),
    "accuracy": wilson(tp + tn, len(x)),
    "mean_predicted": float(x.mean()),
    "observed": float(y.mean()),
    "slope": float(fit.params[1]),
    "ece": float(ece),
    "table": table,
}
path = pathlib.Path(__file__).resolve().parent.parent / "audit/src/model_card/vectors.json"
path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
print(f"wrote {path}: auc {auc:.4f} ({out['auc_low']:.4f}-{out['auc_high']:.4f}), slope {out['slope']:.4f}")
