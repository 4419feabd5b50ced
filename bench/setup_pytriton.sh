#!/usr/bin/env bash
# Creates the virtualenv that runs bench/triton_reference.py (NVIDIA Triton through PyTriton),
# reference system (c) of bench/serving.py. PyTriton needs numpy < 2, so it cannot live in
# DeInfer's environment.
#
#     bench/setup_pytriton.sh [VENV_DIR]   # default: <repo>/.venv-pytriton, where serving.py looks
#
# Idempotent: an existing venv is reused, pip skips what is installed, the patch is applied once.
# PYTHON selects the interpreter that creates the venv (default: python3, must be 3.8-3.12).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-pytriton}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
"$venv/bin/python" -m pip install --quiet "numpy<2" nvidia-pytriton onnxruntime

# Workaround for "'_thread.RLock' object has no attribute '_recursion_count'" when a model loads.
# Why: PyTriton's Python backend stub embeds the *system* libpython (e.g. Debian's 3.11.2) but
# imports the venv's standard library (e.g. pyenv's 3.11.7). That newer stdlib's
# multiprocessing.resource_tracker calls RLock._recursion_count(), which the older C RLock lacks;
# the stub crashes in resource_tracker.getfd() while starting PyTriton's tensor store.
# What: in the installed pytriton/proxy/data.py (copied into every Triton model it serves), right
# before `tracker_fd = resource_tracker.getfd()` in _Popen._launch, insert two lines that replace
# the resource tracker's lock by the pure-Python threading._PyRLock (which has _recursion_count)
# when the C lock lacks that method. Nothing else changes; a marker comment keeps it idempotent.
"$venv/bin/python" - <<'EOF'
import importlib.util
import pathlib
import re

spec = importlib.util.find_spec("pytriton.proxy.data")
assert spec is not None and spec.origin is not None, "pytriton is not installed"
path = pathlib.Path(spec.origin)
marker = "# deinfer-bench: _PyRLock workaround"
source = path.read_text()
if marker in source:
    print(f"{path}: already patched")
else:
    target = re.compile(r"^(?P<indent>[ \t]*)tracker_fd = resource_tracker\.getfd\(\)$", re.M)
    matches = target.findall(source)
    if len(matches) != 1:
        raise SystemExit(f"{path}: expected one `tracker_fd = resource_tracker.getfd()`, "
                         f"found {len(matches)}; this pytriton version needs a new patch")

    def insert(m: re.Match[str]) -> str:
        indent = m["indent"]
        lock = "resource_tracker._resource_tracker._lock"
        return (f"{indent}if not hasattr({lock}, '_recursion_count'):  {marker}\n"
                f"{indent}    {lock} = threading._PyRLock()\n"
                f"{m[0]}")

    patched = target.sub(insert, source)
    if "\nimport threading\n" not in patched:
        raise SystemExit(f"{path}: does not import threading; this pytriton version needs a new patch")
    path.write_text(patched)
    print(f"{path}: patched")
EOF
echo "PyTriton venv ready: $venv/bin/python"
