"""What goes wrong with a MovieLens source: the ingest's errors and the validation's refusal."""

from __future__ import annotations


class IngestError(RuntimeError):
    """The MovieLens source cannot be ingested; the message says which file and why."""


class SourceNotFoundError(IngestError):
    pass


class ChecksumMismatchError(IngestError):
    pass


class ArchiveError(IngestError):
    pass


class DownloadError(IngestError):
    pass


class ValidationError(IngestError):
    """Rows were rejected beyond the allowed threshold, or the files disagree."""
