"""A failed Ray job's log in one sentence: a missing package says to install PruneLab there."""

from __future__ import annotations

import re

MISSING_RE = re.compile(r"No module named '([\w.]+)'")


def install_sentence(module: str) -> str:
    """What to do when a Ray node's Python cannot import ``module``."""
    what = {"app": "PruneLab", "torch": "torch"}.get(module, f"'{module}', which PruneLab needs")
    return (
        f"the Ray node's Python cannot import {what} (No module named '{module}'): install "
        "PruneLab and torch on every Ray node, in the Python environment `ray start` runs from "
        "(`pip install 'prunelab[ray]'` at the server's version, plus s3fs/gcsfs for an s3:// "
        "or gs:// artifact store), then restart Ray on that node (docs/ray.md)"
    )


def explain_job_log(logs: str) -> str:
    """One sentence from a failed Ray job's log: the install advice when an import failed,
    else the log's last line ("" for an empty log)."""
    missing = MISSING_RE.findall(logs)
    if missing:
        return install_sentence(missing[0].split(".")[0])
    lines = logs.strip().splitlines()
    return lines[-1].strip()[:500] if lines else ""
