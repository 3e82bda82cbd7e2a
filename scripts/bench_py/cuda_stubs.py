"""Makes PyPI's CUDA build of torch importable on a CPU-only machine without the ~4.7 GB of
NVIDIA wheels it declares: for every CUDA library that torch's own shared objects need and that
is not on the machine, build a small stub library with the same SONAME, the same symbol versions
and every symbol torch references, each a function returning 100 (cudaErrorNoDevice). torch then
imports, reports `torch.cuda.is_available() == False` and runs everything on the CPU, exactly as
the CPU-only wheel would (same libtorch_cpu.so). Nothing here is used by medfed itself.

    python cuda_stubs.py SITE_PACKAGES        # writes SITE_PACKAGES/nvidia/cu13/lib/*.so*
"""

import os
import re
import subprocess
import sys
import tempfile

SYSTEM = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
    "libstdc++.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2",
}


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", run("readelf", "-d", path))


def version_files(path):
    """Version name -> file that must define it, from .gnu.version_r."""
    out, current = {}, None
    for line in run("readelf", "-V", "-W", path).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current:
            out[m.group(1)] = current
    return out


def symbols(path):
    """(defined, undefined) dynamic symbols; undefined as (name, version or None, weak)."""
    defined, undefined = set(), []
    for line in run("readelf", "-W", "--dyn-syms", path).splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].rstrip(":").isdigit():
            continue
        bind, ndx, name = parts[4], parts[6], parts[7]
        base, _, version = name.partition("@")
        version = version.lstrip("@") or None
        if ndx == "UND":
            if base:
                undefined.append((base, version, bind == "WEAK"))
        else:
            defined.add(base)
    return defined, undefined


def main():
    site = sys.argv[1]
    libdir = os.path.join(site, "torch", "lib")
    objects = [os.path.join(libdir, f) for f in os.listdir(libdir) if ".so" in f]
    objects += [os.path.join(site, "torch", f) for f in os.listdir(os.path.join(site, "torch"))
                if f.startswith("_C") and f.endswith(".so")]
    present = set(os.listdir(libdir))
    ldconfig = run("ldconfig", "-p")
    missing = set()
    for obj in objects:
        for lib in needed(obj):
            if lib not in present and lib not in SYSTEM and f"{lib} " not in ldconfig:
                missing.add(lib)
    defined = set()
    for obj in objects:
        defined |= symbols(obj)[0]
    for lib in SYSTEM | {"libgomp.so.1"}:
        path = next((l.split("=> ")[1] for l in ldconfig.splitlines()
                     if l.strip().startswith(lib + " ")), None)
        if path:
            defined |= symbols(path)[0]
    per_lib = {lib: {} for lib in missing}  # lib -> {version or None: set(names)}
    unversioned = set()
    for obj in objects:
        files = version_files(obj)
        for name, version, weak in symbols(obj)[1]:
            if weak:
                continue
            if version:
                lib = files.get(version)
                if lib in missing:
                    per_lib[lib].setdefault(version, set()).add(name)
            elif name not in defined and not name.startswith(("Py", "_Py")):
                unversioned.add(name)
    # Unversioned names are looked up in every loaded library: put them in one stub that has no
    # symbol versions of its own.
    # needed by libtorch_cuda.so itself, so that it is in every lookup scope that matters.
    core = set(needed(os.path.join(libdir, "libtorch_cuda.so")))
    fallback = sorted(lib for lib in missing if not per_lib[lib] and lib in core)[0]
    per_lib[fallback][None] = unversioned
    out = os.path.join(site, "nvidia", "cu13", "lib")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for lib, versions in sorted(per_lib.items()):
            c = os.path.join(tmp, "stub.c")
            script = os.path.join(tmp, "stub.map")
            with open(c, "w") as f:
                for names in versions.values():
                    for name in sorted(names):
                        f.write(f"int {name}(void) {{ return 100; }}\n")
            with open(script, "w") as f:
                for version, names in versions.items():
                    if version:
                        f.write(f"{version} {{ global: {'; '.join(sorted(names))}; }};\n")
            args = ["gcc", "-shared", "-fPIC", "-w", "-o", os.path.join(out, lib),
                    f"-Wl,-soname,{lib}", c]
            if any(v for v in versions if v):
                args.append(f"-Wl,--version-script={script}")
            run(*args)
            count = sum(len(n) for n in versions.values())
            print(f"cuda_stubs: {lib}: {count} symbols")


if __name__ == "__main__":
    main()
