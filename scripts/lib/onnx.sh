# shellcheck shell=bash
# Installs onnxruntime and numpy into $MEDFED_DEPS/onnx-venv, for the test that checks the ONNX
# export against `medfed-node predict` (tests/e2e/model_file.rs). Sourced by scripts/setup.
# Idempotent: a venv that imports onnxruntime is left alone. medfed itself never runs Python.

ONNXRUNTIME_VERSION=1.32.0

install_onnxruntime() {
    local venv="$MEDFED_DEPS/onnx-venv"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import onnxruntime, numpy" 2>/dev/null; then
        return 0
    fi
    echo "setup: installing onnxruntime $ONNXRUNTIME_VERSION into $venv (for the ONNX export test)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "onnxruntime==$ONNXRUNTIME_VERSION" numpy
}
