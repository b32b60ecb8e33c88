"""Where files and folders live and how they are written: whole or not at all.

A location is a local path or a URI that `pyarrow.fs.FileSystem.from_uri` opens (s3://, gs://,
hdfs://, abfs://, file://); `open_location` turns either into (filesystem, path on it).

Writes never leave a half-written artifact where a reader looks:

- `write_file`: a file is written under a hidden temporary name in its folder (`.NAME.tmp-XXXXXXXX`)
  and renamed over the destination when complete (one rename: a reader sees the old file or the new
  one). On an object store it is uploaded directly: an object exists only once its upload is done.
- `atomic_dir`: a folder is built in a temporary sibling (`.NAME.tmp-XXXXXXXX`); when complete, the
  old folder (if any) is renamed aside (`.NAME.old-XXXXXXXX`), the new one renamed in, the old one
  removed. POSIX cannot rename a folder over a non-empty one, so for the instant between the two
  renames the path holds nothing; a crash there leaves the old folder whole beside it. On an error
  inside the block the temporary folder is removed and the destination is untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from emokp_ray.errors import UserError


def is_uri(location: str | os.PathLike) -> bool:
    """`scheme://...` rather than a plain local path."""
    return "://" in str(location)


def open_location(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a local path (absolute, ~ expanded) or a URI (trailing / dropped);
    a URI pyarrow cannot open (unknown scheme, no such bucket, no credentials) is a one-line UserError."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except Exception as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"{location}: cannot open this URI ({first})") from None
    return fs, path.rstrip("/") or "/"


def _hidden_sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}"


def _write_to(stream: Any, data: bytes | Callable[[Any], None]) -> None:
    if callable(data):
        data(stream)
    else:
        stream.write(data)


def write_file(path: str | os.PathLike, data: bytes | Callable[[Any], None], fs: pafs.FileSystem | None = None) -> None:
    """Write one file whole or not at all. data: the bytes, or a function writing to the open binary
    stream. fs: the filesystem `path` is on (from `open_location`); None for a local path."""
    if fs is not None and not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(str(path)) as stream:  # an object store: whole once uploaded
            _write_to(stream, data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_sibling(target, "tmp")
    try:
        with open(tmp, "wb") as stream:
            _write_to(stream, data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Build a folder that replaces `dest` only when the block completes: yields the empty temporary
    sibling to fill; see the module docstring for what a reader can see meanwhile."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_sibling(dest, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists() or dest.is_symlink():
            old = _hidden_sibling(dest, "old")
            dest.rename(old)
            tmp.rename(dest)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
