#!/usr/bin/env bash
# sdist -> wheel -> fresh venv -> import with native ops (make dist-check; CI runs it).
set -euo pipefail
PY=${1:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, the venv link kept
ROOT=$(pwd)
rm -rf dist-check
mkdir -p dist-check
OUT=$(realpath dist-check)
# from outside the tree: its build/ folder would shadow the `build` package
(cd "$OUT" && "$PY" -m build --sdist --no-isolation --outdir "$OUT" "$ROOT") >"$OUT/sdist.log" 2>&1 \
  || { tail -30 "$OUT/sdist.log"; echo "dist-check: building the sdist failed"; exit 1; }
SDIST=$(ls "$OUT"/diffeig-*.tar.gz)
echo "dist-check: sdist $SDIST ($(tar tzf "$SDIST" | wc -l) files)"
# (listed once: `tar | grep -q` under pipefail fails when grep stops reading early)
tar tzf "$SDIST" >"$OUT/sdist-files.txt"
for needed in docs/ncut.md docs/install.md examples/quokka_ncut.py tests/data/quokka.jpg \
  tests/data/quokka_mask.png tests/data/SOURCE.md csrc/cpu; do
  grep -q "/$needed" "$OUT/sdist-files.txt" || { echo "dist-check: the sdist lacks $needed"; exit 1; }
done
# Without FORCE_CUDA the wheel carries CUDA kernels only where a GPU can use them.
"$PY" -m pip wheel --quiet --no-build-isolation --no-deps -w "$OUT" "$SDIST" >"$OUT/wheel.log" 2>&1 \
  || { tail -30 "$OUT/wheel.log"; echo "dist-check: building a wheel from the sdist failed"; exit 1; }
WHEEL=$(ls "$OUT"/diffeig-*.whl)
echo "dist-check: wheel $(basename "$WHEEL")"
python3 -m venv "$OUT/venv"
# torch (and numpy) from the project's venv, read-only: nothing of diffeig comes along.
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
NEWSITE=$("$OUT/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$SITE" >"$NEWSITE/project-torch.pth"
"$OUT/venv/bin/python" -m pip install --quiet --no-deps --no-index "$WHEEL"
cd "$OUT"
venv/bin/python - "$WHEEL" <<'PY'
import sys, zipfile, importlib.metadata as md
import torch, diffeig
assert "dist-check/venv/" in diffeig.__file__, f"imported {diffeig.__file__}, not the wheel"
assert diffeig.has_ops(), f"the wheel's native ops did not load: {diffeig.load_error()}"
req = [r for r in md.requires("diffeig") if r.startswith(("torch=", "torch>", "torch<"))]
release = torch.__version__.split("+")[0]
assert req == [f"torch=={release}"], req
names = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ("diffeig/py.typed", "diffeig/dncut/configs/vit_s16.yaml"):
    assert needed in names, needed
assert any(n.endswith("LICENSE") for n in names), "LICENSE missing from the wheel"
A = torch.randn(5, 5, dtype=torch.float64)
L, V = diffeig.eigh(A + A.T)
print(f"dist-check: ok: diffeig {diffeig.__version__} from {diffeig.__file__}, native ops, "
      f"requires {req[0]}, version {diffeig.__version__}")
PY
# The examples run from the unpacked sdist against the installed wheel (its photo included).
mkdir -p "$OUT/unpacked" && tar xzf "$SDIST" -C "$OUT/unpacked"
EXDIR=$(ls -d "$OUT"/unpacked/diffeig-*)
(cd "$OUT" && venv/bin/python "$EXDIR/examples/quokka_ncut.py" >"$OUT/example.log" 2>&1) \
  || { tail -20 "$OUT/example.log"; echo "dist-check: examples/quokka_ncut.py failed from the sdist"; exit 1; }
echo "dist-check: examples/quokka_ncut.py ran from the sdist: $(head -n 1 "$OUT/example.log")"
