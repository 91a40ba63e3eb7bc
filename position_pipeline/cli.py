"""The position-pipeline command (placeholder until the subcommands land)."""


def main() -> None:
    raise SystemExit("position-pipeline: no subcommands yet")
