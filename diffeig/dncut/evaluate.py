"""Evaluation commands (filled in by the evaluation issue)."""


def add_commands(sub) -> None:
    pass


def run(args) -> int:
    raise ValueError(f"unknown command {args.command}")
