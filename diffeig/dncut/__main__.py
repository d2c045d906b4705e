"""``python -m diffeig.dncut``: the recipe's command line (diffeig.dncut.cli)."""

from diffeig.dncut.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
