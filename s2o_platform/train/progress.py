"""Progress lines of the training workers."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    # stderr: Ray Train V2 echoes a worker's stdout twice, stderr once.
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )
