"""The docs say what the code does: signatures generated from the code are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_documented_signatures_are_the_codes():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "api_signatures.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_public_function_is_in_the_signature_block():
    import diffeig

    text = (ROOT / "docs" / "api.md").read_text()
    block = text.split("<!-- signatures:")[1].split("-->")[0].split()

    def function(obj):
        return callable(obj) and not isinstance(obj, type)

    public = [f"diffeig.{n}" for n in diffeig.__all__ if function(getattr(diffeig, n))]
    public += [f"diffeig.ncut.{n}" for n in diffeig.ncut.__all__ if n[0].islower()]
    public.append("diffeig.patch_torch")
    missing = [n for n in public if n not in block and n not in ("diffeig.ncut.sym_eigh_ncut",)]
    # has_ops / load_error / has_cuda_kernels take no arguments: documented in install.md
    missing = [n for n in missing if not n.endswith(("has_ops", "load_error", "cuda_kernels"))]
    assert missing == []
