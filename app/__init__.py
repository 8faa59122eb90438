"""PruneLab: a self-hosted web lab for pruning neural networks."""

from __future__ import annotations

__version__ = "0.1.0"
