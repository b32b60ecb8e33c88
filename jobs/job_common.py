"""What the job entrypoints share: URIs for their paths, and one-line errors.

A job's driver runs on the head node; Ray Train workers and Ray Data actors run on any node. So:

- a plain path is used in place. On a cluster it must be one that every node sees alike (a shared
  mount such as NFS, EFS, Filestore or a ReadWriteMany volume) wherever workers read or write it;
- a URI (s3://, gs://, hdfs://, abfs://, file://: whatever `emokp_ray.storage.open_location` opens)
  is staged where only the driver touches it: an input the driver reads is downloaded to a
  temporary folder first (`staged_input`); an output folder the driver writes is written to a
  temporary folder and uploaded when the command ends, after a failure too, so a later run can
  `--resume` from it on any node (`staged_output`);
- a URI that workers would read (training data, the labeling actors' checkpoints) is refused in one
  line by `require_path`, because the library opens those with local file functions today.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from emokp_ray.errors import UserError
from emokp_ray.storage import is_uri, open_location

JOB_PROG = "emokp job"


def _info(uri: str) -> tuple[pafs.FileSystem, str, pafs.FileInfo]:
    fs, path = open_location(uri)
    try:
        return fs, path, fs.get_file_info(path)
    except OSError as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"{uri}: cannot read ({first})") from None


def download(uri: str, dest_dir: Path) -> Path:
    """Copy the file or folder at `uri` into `dest_dir` (keeping its name); returns the local copy."""
    fs, path, info = _info(uri)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{uri}: no such file or folder")
    target = Path(dest_dir) / (PurePosixPath(path.rstrip("/")).name or "root")
    if info.type == pafs.FileType.Directory:
        target.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(target.resolve()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target


def upload(local_dir: Path, uri: str) -> None:
    """Copy every file under `local_dir` to the folder `uri` (files already there are overwritten)."""
    fs, path = open_location(uri)
    fs.create_dir(path, recursive=True)  # a no-op on object stores
    pafs.copy_files(
        str(Path(local_dir).resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


@contextmanager
def staged_input(location: str) -> Iterator[str]:
    """A local path for `location`: itself, or a temporary download of the URI (removed on exit)."""
    if not is_uri(location):
        yield location
        return
    tmp = Path(tempfile.mkdtemp(prefix="emokp-job-in-"))
    try:
        print(f"{JOB_PROG}: downloading {location}", file=sys.stderr, flush=True)
        yield str(download(location, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_output(location: str) -> Iterator[str]:
    """A local folder for the output folder `location`: itself, or a temporary folder that starts
    with the URI's current contents (so --resume finds them) and is uploaded back on exit."""
    if not is_uri(location):
        yield location
        return
    tmp = Path(tempfile.mkdtemp(prefix="emokp-job-out-"))
    local = tmp / "out"
    try:
        _, _, info = _info(location)
        if info.type == pafs.FileType.Directory:
            print(f"{JOB_PROG}: downloading the existing {location}", file=sys.stderr, flush=True)
            local = download(location, tmp)
        elif info.type == pafs.FileType.File:
            raise UserError(f"{location}: is a file, expected a folder")
        try:
            yield str(local)
        finally:
            if local.is_dir():  # what the command left, finished or not
                print(f"{JOB_PROG}: uploading {local} to {location}", file=sys.stderr, flush=True)
                upload(local, location)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def require_path(location: str, flag: str, reason: str) -> str:
    """Refuse a URI where workers on other nodes would open `location` with local file functions."""
    if is_uri(location):
        raise UserError(f"{flag} {location}: must be a path every node sees (a shared mount), because {reason}")
    return location


class JobParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (as `emokp`'s); no flag abbreviations, so
    every flag a job does not know reaches the `emokp` command it forwards to unchanged."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def run_job(body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a job's body; a UserError is printed as one line and exits 2 (like `emokp`)."""
    try:
        return body(argv)
    except UserError as err:
        message = (str(err).splitlines() or [type(err).__name__])[0]
        print(f"{JOB_PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{JOB_PROG}: interrupted", file=sys.stderr)
        return 130
