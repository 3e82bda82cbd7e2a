#!/usr/bin/env python3
"""Scores a CSV with an ONNX model exported by `medfed-node export`, using onnxruntime.

    python onnx_scores.py MODEL.onnx PATIENTS.csv OUT.csv

For the test that checks the export against `medfed-node predict`: each graph input is a schema
column of shape [N, 1] (float for numeric columns, string for categorical ones; cells trimmed,
a blank numeric cell as NaN); OUT.csv gets one `score` per row, in file order, printed with
enough digits to read back as the same float32. Python is used only by this test's set-up
(scripts/setup installs onnxruntime into .deps/onnx-venv); medfed never runs it.
"""

import csv
import sys

import numpy as np
import onnxruntime


def main(model_path: str, csv_path: str, out_path: str) -> None:
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    with open(csv_path, newline="") as f:
        rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]
    feeds = {}
    for graph_input in session.get_inputs():
        cells = [row[graph_input.name] for row in rows]
        if graph_input.type == "tensor(string)":
            feeds[graph_input.name] = np.array(cells, dtype=object).reshape(-1, 1)
        else:
            values = [float(c) if c else float("nan") for c in cells]
            feeds[graph_input.name] = np.array(values, dtype=np.float32).reshape(-1, 1)
    (scores,) = session.run(["score"], feeds)
    with open(out_path, "w") as f:
        f.write("score\n")
        for score in scores.reshape(-1):
            f.write(f"{float(score):.9g}\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
