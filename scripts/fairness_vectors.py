#!/usr/bin/env python3
"""Writes protocol/tests/vectors/fairlearn_metrics.json: reference fairness figures from fairlearn.

The Rust bias-audit math in protocol/src/fairness.rs is checked against the JSON this script
writes. The script draws deterministic synthetic predictions (numpy's seeded PCG64), writes the raw
rows (label, score, group, sex) and the figures fairlearn and scikit-learn compute from them.

Re-run:

    python3 -m venv /tmp/fv && /tmp/fv/bin/pip install fairlearn scikit-learn pandas numpy
    /tmp/fv/bin/python scripts/fairness_vectors.py

What is computed, per sensitive attribute ("group": three groups, one of them smaller than 10
rows; "sex": two groups):

* fairlearn `MetricFrame` by group, with y_pred = (score >= 0.5):
  `selection_rate`, `true_positive_rate`, `false_positive_rate`, `false_negative_rate`,
  `count`, scikit-learn `accuracy_score`, and scikit-learn `precision_score(zero_division=0)`.
* scikit-learn `roc_auc_score(y_true, score)` per group (a second `MetricFrame` on the scores).
* fairlearn `demographic_parity_difference`, `demographic_parity_ratio`,
  `equalized_odds_difference` and `equal_opportunity_difference`, all with their defaults
  (method="between_groups", and agg="worst_case" for equalized odds).
* Exact expected calibration error per group with 10 equal-width bins, computed here with numpy
  (fairlearn has none): ECE = sum_b n_b/n * |mean score in b - fraction positive in b|. A score's
  bin is chosen as the Rust code chooses it for an audit group (its 100-bin histogram bin,
  integer-divided by 10), so only the Rust side's use of histogram-bin centres for the mean score
  differs; the Rust test allows for that the 0.5/100 it can cost. (For these rows the assignment
  is the same as with the 1000-bin histograms the file was first written with, so the figures did
  not change when the audit groups went to 100 bins.)

fairlearn reports every group, however small; the Rust test compares its disparities computed with
no suppression (min_count = 0) to these figures.

Scores are drawn as float32 and written as the exact decimal of that float32, so the Rust side
(which takes f32 scores) thresholds exactly the same values.
"""

import functools
import json
import math
import pathlib
import platform
import sys

import fairlearn
import numpy
import pandas
import sklearn
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score, roc_auc_score

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "protocol" / "tests" / "vectors" / "fairlearn_metrics.json"

SEED = 20_240_611
THRESHOLD = numpy.float32(0.5)
GROUP_SCORE_BINS = 100  # protocol::fairness::GROUP_SCORE_BINS
ECE_BINS = 10


def draw_rows():
    """Deterministic synthetic rows: (label, float32 score, group, sex)."""
    rng = numpy.random.default_rng(SEED)
    # Group sizes: two large groups and one of 8 rows (below the default min_count of 10).
    sizes = {"A": 352, "B": 240, "C": 8}
    prevalence = {"A": 0.35, "B": 0.5, "C": 0.5}
    # Group B's scores are shifted up, so its selection rate and FPR differ from A's.
    shift = {"A": -0.3, "B": 0.4, "C": 0.0}
    labels, scores, groups, sexes = [], [], [], []
    for group, size in sizes.items():
        y = (rng.random(size) < prevalence[group]).astype(int)
        if group == "C":
            # The small group must still have both classes and both predictions.
            y = numpy.array([1, 1, 1, 1, 0, 0, 0, 0])
        logit = 1.6 * (2 * y - 1) + shift[group] + rng.normal(0.0, 1.3, size)
        s = (1.0 / (1.0 + numpy.exp(-logit))).astype(numpy.float32)
        labels.extend(int(v) for v in y)
        scores.extend(s)
        groups.extend([group] * size)
        sexes.extend("F" if v < 0.45 else "M" for v in rng.random(size))
    # Edge scores: exactly the threshold, and both ends of [0, 1].
    scores[0], scores[1], scores[2], scores[3] = (
        numpy.float32(0.5),
        numpy.float32(0.5),
        numpy.float32(0.0),
        numpy.float32(1.0),
    )
    labels[0], labels[1], labels[2], labels[3] = 0, 1, 1, 0
    return (
        numpy.array(labels),
        numpy.array(scores, dtype=numpy.float32),
        numpy.array(groups),
        numpy.array(sexes),
    )


def ece_bin(score):
    """The ECE bin of a float32 score, as protocol/src/fairness.rs assigns it."""
    hist = min(int(math.floor(float(score) * GROUP_SCORE_BINS)), GROUP_SCORE_BINS - 1)
    return hist // (GROUP_SCORE_BINS // ECE_BINS)


def exact_ece(y, s):
    bins = numpy.array([ece_bin(v) for v in s])
    total = 0.0
    for b in range(ECE_BINS):
        mask = bins == b
        n_b = int(mask.sum())
        if n_b == 0:
            continue
        mean_score = float(numpy.mean(s[mask].astype(numpy.float64)))
        frac_pos = float(numpy.mean(y[mask]))
        total += n_b / len(y) * abs(mean_score - frac_pos)
    return total


def attribute_figures(y, y_pred, s, feature):
    metrics = {
        "count": count,
        "selection_rate": selection_rate,
        "true_positive_rate": true_positive_rate,
        "false_positive_rate": false_positive_rate,
        "false_negative_rate": false_negative_rate,
        "accuracy": accuracy_score,
        "precision": functools.partial(precision_score, zero_division=0),
    }
    frame = MetricFrame(metrics=metrics, y_true=y, y_pred=y_pred, sensitive_features=feature)
    auc = MetricFrame(
        metrics=roc_auc_score, y_true=y, y_pred=s.astype(numpy.float64), sensitive_features=feature
    )
    by_group = {}
    for group in frame.by_group.index:
        row = frame.by_group.loc[group]
        mask = feature == group
        figures = {name: float(row[name]) for name in metrics}
        figures["count"] = int(row["count"])
        figures["positives"] = int(y[mask].sum())
        figures["predicted_positives"] = int(y_pred[mask].sum())
        figures["roc_auc"] = float(auc.by_group.loc[group])
        figures["ece_exact"] = exact_ece(y[mask], s[mask])
        by_group[str(group)] = figures
    kw = {"sensitive_features": feature}
    return {
        "by_group": by_group,
        "demographic_parity_difference": float(demographic_parity_difference(y, y_pred, **kw)),
        "demographic_parity_ratio": float(demographic_parity_ratio(y, y_pred, **kw)),
        "equalized_odds_difference": float(equalized_odds_difference(y, y_pred, **kw)),
        "equal_opportunity_difference": float(equal_opportunity_difference(y, y_pred, **kw)),
    }


def main():
    y, s, group, sex = draw_rows()
    y_pred = (s >= THRESHOLD).astype(int)
    out = {
        "generator": "scripts/fairness_vectors.py",
        "command": "/tmp/fv/bin/python scripts/fairness_vectors.py",
        "fairlearn_version": fairlearn.__version__,
        "sklearn_version": sklearn.__version__,
        "numpy_version": numpy.__version__,
        "pandas_version": pandas.__version__,
        "python_version": platform.python_version(),
        "seed": SEED,
        "threshold": float(THRESHOLD),
        "prediction": "y_pred = score >= threshold (float32 scores)",
        "metrics": {
            "selection_rate": "fairlearn.metrics.selection_rate",
            "true_positive_rate": "fairlearn.metrics.true_positive_rate",
            "false_positive_rate": "fairlearn.metrics.false_positive_rate",
            "false_negative_rate": "fairlearn.metrics.false_negative_rate",
            "accuracy": "sklearn.metrics.accuracy_score",
            "precision": "sklearn.metrics.precision_score(zero_division=0)",
            "roc_auc": "sklearn.metrics.roc_auc_score on the float32 scores",
            "ece_exact": "numpy, 10 equal-width bins, exact mean score per bin",
            "disparities": "fairlearn defaults: method='between_groups', agg='worst_case'",
        },
        "columns": ["label", "score", "group", "sex"],
        "rows": [[int(a), float(b), str(c), str(d)] for a, b, c, d in zip(y, s, group, sex)],
        "attributes": {
            "group": attribute_figures(y, y_pred, s, group),
            "sex": attribute_figures(y, y_pred, s, sex),
        },
    }
    small = out["attributes"]["group"]["by_group"]["C"]["count"]
    assert small < 10, small
    text = json.dumps(out, indent=1)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(out['rows'])} rows)", file=sys.stderr)


if __name__ == "__main__":
    main()
