"""What the test tiers share: the repository's root, bounded waits, and the worker processes of the system tests."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository's root (where pyproject.toml, dagster.yaml and workspace.yaml are)."""
