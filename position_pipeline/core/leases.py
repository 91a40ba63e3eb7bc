"""How long a claim is a run's alone: three limits that together keep an item from being written by two runs.

A run checks its claim is at most WRITE_FENCE_SECONDS old just before it appends; the sensor hands a finished run's
claims to other runs only once they are MAX_RUNTIME_SECONDS old (two minutes later), and anyone's claims once they
are CLAIM_LEASE_SECONDS old. A run that Dagster reports finished while its worker lives on (terminated but stuck,
failed by run monitoring) therefore either appends before its items can move, or not at all.
"""

WRITE_FENCE_SECONDS = 480
"""A run writes nothing for a claim older than this (it gives the items back and fails instead)."""
MAX_RUNTIME_SECONDS = 600
"""Run monitoring fails a run older than this. The claims of a finished run come back only once they are this old:
two minutes past the write fence, so a run reported finished while its worker lives on can no longer append."""
CLAIM_LEASE_SECONDS = 900
"""A claim older than this is given back even if its run was never reported finished."""
