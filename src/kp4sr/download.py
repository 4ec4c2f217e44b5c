"""Download the public MovieLens archives from GroupLens, verified and safely extracted.

Only the GroupLens archives are downloadable: KB4Rec's Freebase linkage and the KP4SR release
may not be redistributed and are fetched by hand (see the README of the shared datasets).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kp4sr.errors import ConfigError, DataError, KP4SRError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
MARKER = ".kp4sr-download.json"
CHUNK = 1 << 20

GROUPLENS_TERMS = """\
MovieLens data sets were collected by the GroupLens Research Project at the University of
Minnesota, which grants their use for research under these conditions (summary; the full
terms are the README in the archive and https://grouplens.org/datasets/movielens/):
  * do not state or imply endorsement by the University of Minnesota or GroupLens;
  * acknowledge the data set in publications: cite F. Maxwell Harper and Joseph A. Konstan,
    "The MovieLens Datasets: History and Context", ACM TiiS 5(4), Article 19, 2015;
  * do not redistribute the data without separate permission;
  * no commercial or revenue-bearing use without permission from GroupLens.
The data come with no guarantee of correctness or fitness for any purpose."""


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: file name, MD5 (None when no trusted value is known), terms."""

    filename: str
    md5: str | None
    terms: str = GROUPLENS_TERMS


# MD5s of the GroupLens archives as published in <name>.zip.md5 next to each archive.
# Sources (values pinned by other projects, cross-checked):
#   ml-100k, ml-1m, ml-10m, ml-20m: eli-osherovich/papers_with_code,
#     datasets/movielens/dl_config.py (all four);
#   ml-1m, ml-20m also numericalalgorithmsgroup/MLFirstSteps_Azure, ncf/verify_dataset.sh
#     ("From: curl -O http://files.grouplens.org/datasets/movielens/ml-1m.zip.md5");
#   ml-10m also several dataset registries pinning the same ml-10m.zip MD5; ml-100k also
#     several course and benchmark repositories.
# ml-latest-small is rebuilt by GroupLens from time to time, so no value is pinned: it is
# downloaded unverified, with a message saying so.
DATASETS: dict[str, Archive] = {
    "ml-100k": Archive("ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": Archive("ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-10m": Archive("ml-10m.zip", "ce571fd55effeba0271552578f2648bd"),
    "ml-20m": Archive("ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-latest-small": Archive("ml-latest-small.zip", None),
}


def default_cache_dir() -> Path:
    """``$KP4SR_CACHE``, else ``~/.cache/kp4sr``: where downloads and preprocessed data go."""
    env = os.environ.get("KP4SR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kp4sr"


def _say(message: str) -> None:
    """Progress and notices go to stderr, so that stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


def _md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks (ml-20m is 190 MB)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, progress: bool) -> None:
    """Stream ``url`` into a temporary file next to ``dest``, then rename it into place.

    Any network or HTTP failure is a one-line KP4SRError; a partial file never remains.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = last = 0
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress and total and (done - last >= total // 10 or done == total):
                    last = done
                    _say(f"  {done * 100 // total:3d}%  {done / 1e6:.1f} of {total / 1e6:.1f} MB")
        tmp.replace(dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise KP4SRError(f"cannot download {url}: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _verify(path: Path, expected: str | None) -> str:
    """The file's MD5; a mismatch deletes the file and is a DataError."""
    actual = _md5(path)
    if expected is None:
        _say(
            f"{path.name}: the checksum is unknown, so the archive is NOT verified "
            f"(its MD5 is {actual}; compare it with {path.name}.md5 on the GroupLens site)"
        )
    elif actual != expected:
        path.unlink(missing_ok=True)
        raise DataError(
            f"MD5 checksum mismatch: expected {expected}, got {actual}; the file was deleted "
            "(a corrupted download or a changed archive: try again)",
            path,
        )
    return actual


def _members(zf: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    """The archive's members, refusing any that would land outside the target folder."""
    infos = zf.infolist()
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
            raise DataError(
                f"unsafe archive member {info.filename!r} (absolute path or '..'): not extracted",
                path,
            )
    return infos


def _extract(archive: Path, target: Path) -> None:
    """Extract into ``target`` via a temporary folder renamed into place.

    A single top-level folder in the archive (``ml-100k/``) is stripped, so that ``target``
    holds the data files themselves.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"not a readable zip archive ({e})", archive) from None
    with zf:
        infos = _members(zf, archive)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            for info in infos:
                zf.extract(info, staging)
            entries = list(staging.iterdir())
            root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
            if target.exists():
                shutil.rmtree(target)
            root.replace(target)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"cannot extract the archive ({e})", archive) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _marker_ok(folder: Path, expected: str | None) -> bool:
    """True when ``folder`` holds a complete extraction of an archive with this checksum."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and (expected is None or marker.get("md5") == expected)


def terms(name: str) -> str:
    """The usage terms to show before downloading ``name``."""
    return _archive(name).terms


def _archive(name: str) -> Archive:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def download(
    name: str, cache_dir: Path, base_url: str | None = None, progress: bool = True
) -> Path:
    """Fetch, verify and extract a MovieLens archive; returns ``cache_dir/<name>``.

    Nothing is fetched when the folder is already there from a verified download, and an
    archive already in ``cache_dir`` is re-verified and extracted rather than fetched again.
    ``base_url`` replaces the GroupLens host (a mirror, or a local server in tests). The usage
    terms are printed (stderr) before a download.
    """
    spec = _archive(name)
    cache_dir = Path(cache_dir)
    target = cache_dir / name
    if _marker_ok(target, spec.md5):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / spec.filename
    if archive.is_file() and spec.md5 is not None and _md5(archive) != spec.md5:
        archive.unlink()
    if not archive.is_file():
        url = f"{(base_url or GROUPLENS_URL).rstrip('/')}/{spec.filename}"
        _say(spec.terms)
        if progress:
            _say(f"downloading {url}")
        _fetch(url, archive, progress)
    md5 = _verify(archive, spec.md5)
    try:
        _extract(archive, target)
    except DataError:
        archive.unlink(missing_ok=True)  # a rejected archive is not worth keeping
        raise
    (target / MARKER).write_text(json.dumps({"archive": spec.filename, "md5": md5}) + "\n")
    if progress:
        _say(f"{name}: extracted to {target}")
    return target
