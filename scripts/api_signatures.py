"""Writes the signatures of diffeig's public functions into the docs, from the code.

Each block between ``<!-- signatures -->`` and ``<!-- /signatures -->`` in docs/*.md is
replaced by ``inspect.signature`` of the functions it names (one ``name`` per line in the
marker, e.g. ``<!-- signatures: diffeig.eigh diffeig.eigsh -->``). ``--check`` rewrites
nothing and exits 1 where a block differs (tests/test_docs.py runs it).

    python scripts/api_signatures.py          # rewrite the blocks
    python scripts/api_signatures.py --check  # fail if any is stale
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"(<!-- signatures: ([^>]*?) -->\n)(.*?)(<!-- /signatures -->)", re.S)


def resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def signature(dotted: str) -> str:
    sig = inspect.signature(resolve(dotted))
    # names, kinds and defaults (the types are in each docstring)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    sig = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
    return f"{dotted}{str(sig).replace(chr(39), chr(34))}"


def render(names: str) -> str:
    lines = [signature(n) for n in names.split()]
    return "```python\n" + "\n".join(lines) + "\n```\n"


def update(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report stale blocks")
    args = p.parse_args(argv)
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        new = update(text)
        if new != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"stale signatures in docs/{', docs/'.join(stale)}: run python {sys.argv[0]}")
        return 1
    print("docs signatures " + ("stale: " + ", ".join(stale) if stale else "up to date"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
