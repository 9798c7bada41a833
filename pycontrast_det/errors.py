"""Every error the library raises, one class per kind of failure, each message saying what to do.

All derive from :class:`ZooError` so that the CLI can print them without a traceback.
"""
from __future__ import annotations


class ZooError(Exception):
    """Base class: a failure the user can act on; the CLI prints the message and exits 2."""


class ManifestError(ZooError):
    """zoo.yaml (or a user manifest) is malformed: names the file, entry and field."""


class UnknownEntryError(ZooError, KeyError):
    """No zoo entry (detector or pretrain) of that name; the message offers close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(ZooError):
    """A config file or a KEY VALUE override is malformed, unknown, or not supported by the model."""


class DownloadError(ZooError):
    """Every URL of a file failed; the message lists each URL and why."""


class ChecksumError(DownloadError):
    """Downloaded or cached bytes do not match the expected sha256 or size."""


class HTMLResponseError(DownloadError):
    """A server answered with an HTML page (dead link, quota page) instead of weights."""


class FilesystemError(ZooError):
    """A file or folder cannot be written (read-only, permission, disk or quota full); names the path and what
    to do."""


class OfflineError(ZooError):
    """Offline mode is on and the file is not in the cache; says where to put it."""


class PublishError(ZooError):
    """Publishing cannot go on (target unusable, upload refused), or a published folder is incomplete."""


class CheckpointFormatError(ZooError):
    """A checkpoint's format is unknown, or it cannot initialise the requested network."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A checkpoint would run code or build non-data objects on load; it was refused."""


class ArchitectureMismatchError(CheckpointFormatError):
    """A checkpoint's keys or shapes belong to another architecture than the model's."""


class DatasetError(ZooError):
    """A dataset is missing, its annotations are malformed, or its categories do not match."""


class Detectron2NotInstalledError(ZooError, ImportError):
    """An operation needs detectron2, which is not importable here."""


class NonFiniteLossError(ZooError, FloatingPointError):
    """A training loss became NaN or infinite; names the iteration and every loss (detectron2 stops too)."""


class LogFormatError(ZooError):
    """A training log (detectron2 log.txt or metrics.json) is missing or has nothing we can read."""


class MissingDependencyError(ZooError, ImportError):
    """An optional dependency (a package extra) is not installed; the message gives the pip command."""


class ExportError(ZooError):
    """A model cannot be exported, or a file is not an exported detector this package can run."""


class RankFailedError(ZooError):
    """A process of a multi-process run failed (the others were stopped); the message is that process's error."""


def yaml_problem(path: object, exc: BaseException) -> str:
    """One line for a YAML parse error: ``FILE:LINE:COLUMN: what`` (PyYAML's message spans lines and ends in ``^``)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    what = what or " ".join(str(exc).split())
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: {what}"


class SettingsError(ZooError):
    """An environment setting (``PYCONTRAST_ZOO_*``) has a value that cannot be used; names the variable."""


class BadResponseError(DownloadError):
    """A server's answer is not the whole file: empty, encoded without being asked, or longer than announced."""


class SlowDownloadError(DownloadError):
    """A download fell below the minimum throughput (PYCONTRAST_ZOO_MIN_SPEED); its partial is kept."""


class DownloadInterrupted(KeyboardInterrupt):
    """A download stopped by Ctrl-C, SIGTERM or :func:`~pycontrast_det.store.interrupt_downloads`; its partial is
    kept for the next run. ``signum``: the signal, when one stopped it."""

    def __init__(self, message: str = "download interrupted", signum: int = 0) -> None:
        super().__init__(message)
        self.signum = signum


class UntrustedExportError(ExportError):
    """A TorchScript file that can run code on load was not exported here and was not marked trusted."""
