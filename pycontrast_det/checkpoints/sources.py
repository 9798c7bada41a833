"""Zoo entry / pretrain name -> verified local file, through the store: which files an entry has, under which
cache keys, and which alternative of a model or a pretrain to use. No torch here."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from .. import store
from ..errors import DownloadError, OfflineError, ZooError
from ..store import ROLES
from ..zoo import DetectorEntry, FileRef, PretrainEntry, Zoo, load_manifest

__all__ = ["ROLES", "entry_files", "model_files", "pretrain_files", "fetch_pretrain", "fetch_entry_file",
           "fetch_first", "import_entry_file"]

log = logging.getLogger(__name__)


def pretrain_files(pretrain: PretrainEntry) -> list[tuple[str, FileRef]]:
    """(key, file) of a pretrain: ``<name>/pretrain`` then its alternatives ``<name>/alt<i>``."""
    files = [(f"{pretrain.name}/pretrain", pretrain.file)] if pretrain.file is not None else []
    return files + [(f"{pretrain.name}/alt{i}", alt) for i, alt in enumerate(pretrain.alternatives)]


def model_files(entry: DetectorEntry) -> list[tuple[str, FileRef]]:
    """(key, file) of a detector entry's model: ``<name>/model`` then its alternatives ``<name>/model_alt<i>``."""
    files = [(f"{entry.name}/model", entry.model)] if entry.model is not None else []
    return files + [(f"{entry.name}/model_alt{i}", alt) for i, alt in enumerate(entry.model_alternatives)]


def entry_files(name: str, what: Sequence[str] = ROLES, zoo: Optional[Zoo] = None) -> list[tuple[str, FileRef]]:
    """(key, file) pairs of a detector entry's roles in ``what`` (pretrain: its pretrain's files), or of a
    pretrain named ``name``. Roles with no published file are left out."""
    zoo = zoo or load_manifest()
    unknown = [w for w in what if w not in ROLES]
    if unknown:
        raise ZooError(f"unknown file role(s) {', '.join(unknown)} (known: {', '.join(ROLES)})")
    if name in zoo.pretrains and name not in zoo.entries:
        return pretrain_files(zoo.pretrains[name]) if "pretrain" in what else []
    entry = zoo.entry(name)
    out: list[tuple[str, FileRef]] = model_files(entry) if "model" in what else []
    if "log" in what and entry.log is not None:
        out.append((f"{name}/log", entry.log))
    if "pretrain" in what:
        out += pretrain_files(zoo.pretrain(entry.pretrain))
    return out


def fetch_first(files: Sequence[tuple[str, FileRef]], *, quiet: bool = False, offline: Optional[bool] = None
                ) -> tuple[Path, str, FileRef]:
    """(path, key, file) of the first of ``files`` (a main file, then its alternatives) that can be fetched;
    the error of the first one when none can."""
    first_error: Optional[ZooError] = None
    for key, file in files:
        try:
            return store.fetch_file(file, key, quiet=quiet, offline=offline), key, file
        except (DownloadError, OfflineError) as exc:
            first_error = first_error or exc
            if len(files) > 1:
                log.warning("%s: %s; trying the next alternative", key, str(exc).splitlines()[0])
    assert first_error is not None
    raise first_error


def fetch_pretrain(name: str, *, zoo: Optional[Zoo] = None, quiet: bool = False,
                   offline: Optional[bool] = None) -> tuple[Path, FileRef]:
    """A pretrain's weights: its main file, else the first alternative that can be fetched, with its FileRef
    (whose ``format`` tells the checkpoint reader how to read it)."""
    zoo = zoo or load_manifest()
    pretrain = zoo.pretrain(name)
    files = pretrain_files(pretrain)
    if not files:
        raise ZooError(f"pretrain {name!r} has no weights file ({pretrain.note or pretrain.method})")
    path, _, file = fetch_first(files, quiet=quiet, offline=offline)
    return path, file


def fetch_entry_file(name: str, role: str, *, zoo: Optional[Zoo] = None, quiet: bool = False,
                     offline: Optional[bool] = None) -> Path:
    """The local path of a detector entry's ``model`` (else of the first of its alternatives that can be
    fetched) or ``log``, or of its (or a pretrain's) ``pretrain``."""
    zoo = zoo or load_manifest()
    if role == "pretrain":
        pretrain = name if (name in zoo.pretrains and name not in zoo.entries) else zoo.entry(name).pretrain
        return fetch_pretrain(pretrain, zoo=zoo, quiet=quiet, offline=offline)[0]
    if role not in ("model", "log"):
        raise ZooError(f"unknown file role {role!r} (known: {', '.join(ROLES)})")
    entry = zoo.entry(name)
    file = getattr(entry, role)
    if file is None:
        raise ZooError(f"{name}: no {role} was published" + (f" ({entry.note})" if entry.note else ""))
    if role == "model":
        return fetch_first(model_files(entry), quiet=quiet, offline=offline)[0]
    return store.fetch_file(file, f"{name}/{role}", quiet=quiet, offline=offline)


def _unique_name(filename: str, zoo: Zoo) -> bool:
    """Whether no two files of the zoo share this file name (``InsDis.pth`` yes, ``model_final.pth`` no)."""
    files = [f for e in zoo.entries.values() for f in (e.model, e.log, *e.model_alternatives) if f is not None]
    files += [f for p in zoo.pretrains.values() for f in ((p.file,) if p.file else ()) + p.alternatives]
    return sum(f.filename == filename for f in files) <= 1


def import_entry_file(directory: Union[str, os.PathLike], file: FileRef, key: str, zoo: Optional[Zoo] = None) -> Path:
    """:func:`pycontrast_det.store.import_from_dir`, also finding ``DIR/<name>`` when no other file of the zoo
    has that name."""
    return store.import_from_dir(directory, file, key,
                                 bare_name_ok=_unique_name(file.filename, zoo or load_manifest()))
