"""The checked-file index of an image folder: what start-up learnt about each file, kept between runs.

Before the first step a folder's files are checked (:func:`vitkit.data.images.quick_check`: the header, and the
end marker of JPEGs and PNGs), in the data-loading worker processes. The index remembers each file's header, or
why it is bad, keyed by its path, size and modification time, and what was computed from the files (normalisation
statistics, the held-out split); the next start, resume or ``vitkit evaluate`` checks only the files that are new
or changed and computes nothing again. The index is one JSON file per
folder in the user's cache directory (``$VITKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vitkit``, else
``~/.cache/vitkit``), so a read-only data folder is no obstacle, written atomically; a cache that cannot be
written only costs the next start its checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vitkit.data.images import ImageLoadError, quick_check, read_ahead

logger = logging.getLogger(__name__)

CACHE_ENV = "VITKIT_CACHE_DIR"
INDEX_VERSION = 2
Header = tuple[int, tuple[int, int]]  # (channels, (height, width))
Checker = Callable[[str], Header]
_PARALLEL_FROM = 256  # fewer files than this are checked in this process: starting workers would cost more


def cache_dir() -> Path:
    """Where vitkit keeps what it can recompute: ``$VITKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vitkit``, else
    ``~/.cache/vitkit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitkit"


def _check_one(checker: Checker, path: str) -> Header | str:
    """The file's header, or the reason it cannot be read."""
    try:
        return checker(path)
    except ImageLoadError as exc:
        return exc.reason or str(exc)


def _check_chunk(checker: Checker, paths: Sequence[str]) -> list[Header | str]:
    """_check_one of each path, their first and last bytes read ahead together (for a folder that is not in the
    page cache, the disk then serves the chunk's reads at once instead of one after another)."""
    read_ahead(paths)
    return [_check_one(checker, path) for path in paths]


def check_files(paths: Sequence[str], checker: Checker = quick_check, workers: int = 0) -> list[Header | str]:
    """``checker`` applied to every path (header, or the reason it failed), in order, in ``workers`` processes
    when > 1."""
    parallel = workers > 1 and len(paths) >= _PARALLEL_FROM
    size = max(16, min(512, len(paths) // (8 * workers))) if parallel else 256
    chunks = [paths[start : start + size] for start in range(0, len(paths), size)]
    where = f" ({workers} processes)" if parallel else ""
    bar = tqdm(total=len(paths), desc=f"checking images{where}", unit="img", leave=False, disable=None)
    results: list[Header | str] = []
    with ProcessPoolExecutor(max_workers=workers) if parallel else nullcontext() as pool:
        for chunk in (pool.map if pool else map)(partial(_check_chunk, checker), chunks):
            results.extend(chunk)
            bar.update(len(chunk))
    bar.close()
    return results


def _stat(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of a regular file, None for anything to check afresh each time."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if info.st_size else None


class FolderIndex:
    """What is known about the image files under ``root``, loaded from and saved to ``directory`` (the cache).

    ``entries`` maps a file (its path relative to ``root``) to ``[size, mtime_ns, channels, height, width]`` or
    ``[size, mtime_ns, reason]``; ``computed`` maps a :meth:`fingerprint` of (files, settings) to what was computed
    from them (the normalisation statistics, the held-out split). ``checked`` counts the files the last
    :meth:`check` had to open.
    """

    def __init__(self, root: str | os.PathLike, directory: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        resolved = str(self.root.resolve())
        name = hashlib.sha256(resolved.encode()).hexdigest()[:32]
        self.file = Path(directory or cache_dir()) / "folder-index" / f"{name}.json"
        self.entries: dict[str, list[Any]] = {}
        self.computed: dict[str, Any] = {}
        self.checked = 0
        try:
            stored = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the unreadable folder index %s (%s); checking %s afresh", self.file, exc, root)
            return
        if isinstance(stored, dict) and stored.get("version") == INDEX_VERSION and stored.get("root") == resolved:
            self.entries, self.computed = stored["files"], stored["computed"]

    def _key(self, path: str) -> str:
        prefix = str(self.root) + os.sep
        return path[len(prefix) :] if path.startswith(prefix) else os.path.abspath(path)

    def check(
        self, paths: Sequence[str], workers: int = 0, checker: Checker = quick_check
    ) -> tuple[list[Header | None], list[str]]:
        """(header of each file, None if bad; one ``path: reason`` line per bad file), checking only files whose
        size or modification time differs from the index's, in ``workers`` processes; the index is saved."""
        keys = [self._key(path) for path in paths]
        stats = [_stat(path) for path in paths]
        known: list[Header | str | None] = []
        for key, stat in zip(keys, stats, strict=True):
            entry = self.entries.get(key)
            if stat is None or entry is None or tuple(entry[:2]) != stat:
                known.append(None)
            else:
                known.append(entry[2] if len(entry) == 3 else (entry[2], (entry[3], entry[4])))
        todo = [i for i, result in enumerate(known) if result is None]
        self.checked = len(todo)
        if todo:
            logger.info("checking %d of %d files of %s (the others are unchanged since %s)", len(todo), len(paths),
                        self.root, self.file)  # fmt: skip
            for i, result in zip(todo, check_files([paths[i] for i in todo], checker, workers), strict=True):
                known[i] = result
                stat = stats[i]
                if stat is not None:
                    flat = [result] if isinstance(result, str) else [result[0], *result[1]]
                    self.entries[keys[i]] = [*stat, *flat]
            self.save()
        headers = [None if isinstance(result, str) else result for result in known]
        bad = [f"{path}: {result}" for path, result in zip(paths, known, strict=True) if isinstance(result, str)]
        return headers, bad

    def fingerprint(self, paths: Sequence[str], *settings: Any) -> str:
        """A key for what was computed from these files (as the index knows them) with these settings."""
        digest = hashlib.sha256(json.dumps(settings).encode())
        for path in paths:
            key = self._key(path)
            digest.update(f"{key}\0{self.entries.get(key, [])[:2]}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        """Write the index atomically; a cache that cannot be written is logged, not fatal."""
        from vitkit.io import (
            atomic_path,  # torch, which vitkit.io imports, is loaded by then anyway
        )

        document = {"version": INDEX_VERSION, "root": str(self.root.resolve()), "files": self.entries,
                    "computed": self.computed}  # fmt: skip
        try:
            with atomic_path(self.file) as tmp:
                tmp.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
        except OSError as exc:
            logger.warning("cannot write the folder index %s (%s): the next start checks %s again; set %s to a "
                           "writable folder", self.file, exc, self.root, CACHE_ENV)  # fmt: skip
