"""Errors about the user's input, importable without torch or Ray (the CLI catches them)."""

from __future__ import annotations


class BadRowsError(ValueError):
    """Broken corpus rows found while ``data.on_bad_rows`` is ``fail``; names file and line."""


class IncompleteUploadError(RuntimeError):
    """A published folder without a manifest, or whose files do not match it."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint whose files do not match its manifest, or whose state is not plain data."""


class SearchInterrupted(RuntimeError):
    """A search stopped before all its trials ended; running it again continues it."""


class RunBusyError(RuntimeError):
    """Another live driver holds the run's folder (its lease names the host and pid)."""


class DamagedDataError(RuntimeError):
    """A compiled fragment whose bytes do not match the sha256 its manifest lists."""
