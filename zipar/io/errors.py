"""The error every reader of zipar.io raises."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, unsafe, or not what was expected."""
