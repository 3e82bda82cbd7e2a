# shellcheck shell=bash
# Installs libtorch 2.13.0 (CPU) for tch 0.26 into $MEDFED_DEPS/libtorch, from PyPI wheels.
# Sourced by scripts/setup. Idempotent: a complete install (marked by .complete) is left alone.

TORCH_VERSION=2.13.0
CUDA_RUNTIME_VERSION=13.0.96
CUDA_CUPTI_VERSION=13.0.85

install_libtorch() {
    local dest="$MEDFED_DEPS/libtorch"
    if [[ -n "${LIBTORCH:-}" && "${LIBTORCH}" != "$dest" ]]; then
        echo "setup: using LIBTORCH=$LIBTORCH from the environment (GPU or custom libtorch)"
        return 0
    fi
    if [[ -f "$dest/.complete" ]]; then
        return 0
    fi
    echo "setup: installing libtorch $TORCH_VERSION (CPU) into $dest"
    local dl="$MEDFED_DEPS/downloads"
    mkdir -p "$dl"
    python3 -m pip download --quiet --no-deps --dest "$dl" "torch==$TORCH_VERSION" \
        "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION"
    rm -rf "$dest.partial"
    mkdir -p "$dest.partial/lib"
    python3 - "$dl" "$dest.partial" "$TORCH_VERSION" <<'PY'
import glob, os, shutil, sys, zipfile
dl, dest, version = sys.argv[1], sys.argv[2], sys.argv[3]
def one(pattern):
    found = sorted(glob.glob(os.path.join(dl, pattern)))
    if not found:
        sys.exit(f"setup: no wheel matching {pattern} in {dl}")
    return found[-1]
torch = zipfile.ZipFile(one(f"torch-{version}-*.whl"))
wanted_libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1", "libtorch.so"}
for info in torch.infolist():
    name = info.filename
    if name.startswith("torch/include/") and not name.endswith("/"):
        target = os.path.join(dest, "include", name[len("torch/include/"):])
    elif name.startswith("torch/lib/") and os.path.basename(name) in wanted_libs:
        target = os.path.join(dest, "lib", os.path.basename(name))
    else:
        continue
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with torch.open(info) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out)
for pattern, lib in [("nvidia_cuda_runtime-*.whl", "libcudart.so.13"), ("nvidia_cuda_cupti-*.whl", "libcupti.so.13")]:
    wheel = zipfile.ZipFile(one(pattern))
    member = next(n for n in wheel.namelist() if n.endswith("/" + lib))
    with wheel.open(member) as src, open(os.path.join(dest, "lib", lib), "wb") as out:
        shutil.copyfileobj(src, out)
PY
    echo "$TORCH_VERSION" > "$dest.partial/build-version"
    touch "$dest.partial/.complete"
    rm -rf "$dest"
    mv "$dest.partial" "$dest"
    echo "setup: libtorch ready ($(du -sh "$dest" | cut -f1))"
}
