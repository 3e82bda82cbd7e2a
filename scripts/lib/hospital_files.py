"""Writing a data set's hospital CSVs into place, shared by prepare_heart.py and prepare_nhefs.py.

Setup-time only, standard library only.
"""

import hashlib
import os
import shutil
import tempfile


def write_folder(files, out_dir, source):
    """Writes `files` ({stem: bytes}) as `stem.csv` into `out_dir`, with a SOURCE file naming
    where they came from, through a temporary folder renamed into place, the `.complete` marker
    last: a folder that has the marker is whole."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".", dir=parent)
    try:
        os.chmod(staging, 0o755)
        for stem, data in files.items():
            with open(os.path.join(staging, f"{stem}.csv"), "wb") as f:
                f.write(data)
        with open(os.path.join(staging, "SOURCE"), "w", encoding="utf-8") as f:
            f.write(source + "\n")
        open(os.path.join(staging, ".complete"), "w").close()
        shutil.rmtree(out_dir, ignore_errors=True)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_sums(files, sums_path, fail):
    """Checks each of `files` ({stem: bytes}) against the SHA-256 that `sums_path` (a sha256sum
    file) records for `stem.csv`, calling `fail(message)` on the first that differs. A missing
    sums file checks nothing."""
    if not os.path.exists(sums_path):
        return
    with open(sums_path, encoding="utf-8") as f:
        expected = dict(reversed(line.split()) for line in f if line.strip())
    for stem, data in files.items():
        name = f"{stem}.csv"
        digest = hashlib.sha256(data).hexdigest()
        if expected.get(name) != digest:
            fail(f"{name} has SHA-256 {digest}, {sums_path} says {expected.get(name)}")
