"""Logging for workflow scripts: everything, warnings from libraries included, goes to the rule's log."""

from __future__ import annotations

import logging
import sys


def to_rule_log(path: str) -> None:
    """Send stderr and the logging module to the rule's `log:` file."""
    # Kept open for the life of the job; line-buffered so progress shows while it runs.
    stream = open(path, "a", buffering=1)  # noqa: SIM115
    sys.stderr = stream
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
