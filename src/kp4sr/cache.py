"""A cache of preprocessed datasets, so that big sources (ML-20M, a Freebase subgraph) are
parsed once.

An entry is keyed by a SHA-256 of the input files' (resolved path, size, mtime_ns), the
options that shaped the result and the kp4sr version: editing an input, changing an option or
upgrading kp4sr gives a new key. Entries are written with :func:`kp4sr.data.save_dataset`
(JSON + safetensors: nothing is unpickled) into a temporary folder renamed into place, so a
crash never leaves a half-written entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kp4sr import __version__
from kp4sr.data import Dataset, load_saved_dataset, save_dataset
from kp4sr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
KEY_FILE = "cache-key.json"


def default_dataset_cache() -> Path:
    """``<default cache dir>/datasets`` (``$KP4SR_CACHE`` or ``~/.cache/kp4sr``)."""
    from kp4sr.download import default_cache_dir

    return default_cache_dir() / "datasets"


def cache_key(key_parts: dict[str, Any], files: list[Path]) -> tuple[str, dict[str, Any]]:
    """The entry's hex key and the JSON document it hashes (kept in the entry for debugging).

    A missing input file is a DataError: it could not be cached nor built.
    """
    stamps = []
    for f in files:
        path = Path(f).resolve()
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(f"cannot read the file: {e.strerror or e}", path) from None
        stamps.append([str(path), st.st_size, st.st_mtime_ns])
    doc = {"format": CACHE_FORMAT, "kp4sr": __version__, "files": stamps, "options": key_parts}
    try:
        text = json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cache options must be JSON-serialisable: {e}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), doc


def cached(
    key_parts: dict[str, Any],
    files: list[Path],
    build: Callable[[], Dataset],
    cache_dir: Path | None = None,
) -> Dataset:
    """The dataset ``build()`` returns, from the cache when an entry with the same key exists.

    ``files`` are the inputs ``build`` reads and ``key_parts`` every option that changes its
    result (non-JSON values such as paths are keyed by their text). A corrupted entry is
    rebuilt with a warning, never an error.
    """
    root = Path(cache_dir) if cache_dir is not None else default_dataset_cache()
    key, doc = cache_key(key_parts, files)
    entry = root / key
    if entry.is_dir():
        try:
            ds = load_saved_dataset(entry)
        except (DataError, KeyError, TypeError, ValueError, IndexError) as e:
            log.warning("%s: corrupted cache entry (%s), rebuilding it", entry, e)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            log.info("%s: loaded from the cache", entry)
            return ds
    ds = build()
    _store(ds, root, entry, doc)
    return ds


def _store(ds: Dataset, root: Path, entry: Path, doc: dict[str, Any]) -> None:
    """Write the entry into a temporary folder and rename it into place.

    If another process stored the same key meanwhile, its entry is kept. A cache that cannot
    be written only costs speed, so the failure is logged, not raised.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name[:16]}.", dir=root))
    except OSError as e:
        log.warning("%s: cannot write the dataset cache (%s)", root, e.strerror or e)
        return
    try:
        save_dataset(ds, tmp)
        (tmp / KEY_FILE).write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        tmp.rename(entry)
    except OSError as e:
        if not entry.is_dir():
            log.warning("%s: cannot write the dataset cache (%s)", entry, e.strerror or e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
