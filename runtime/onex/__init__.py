"""onex: a runtime for contract-driven ONEX nodes."""

from __future__ import annotations

__version__ = "0.1.0"
