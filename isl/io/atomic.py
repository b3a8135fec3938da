"""Atomic outputs: write to a temporary name beside the target, rename at the end.

Nothing half-written is ever left under the final name: if the work fails,
the temporary file or directory is removed. Files and directories get the
permissions the user's umask allows (as `open` and `os.makedirs` would give
them), not the private 0600 / 0700 of `tempfile`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: str, directory: bool = False) -> None:
    """Gives a `tempfile` file (0600) or directory (0700) the mode the umask allows."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        _as_created(temporary)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def temporary_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yields a temporary file name beside `path`; renames it there on success.

    For writers that want a file name (e.g. an image library), not bytes.
    The temporary name keeps the final extension so format detection works.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    os.close(handle)
    try:
        _as_created(temporary)
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def output_directory(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[str]:
    """Yields a temporary directory that becomes `path` when the block succeeds.

    Files are written into the yielded directory. On success, an existing
    `path` is replaced (when `overwrite`), else the temporary directory is
    removed and `path` is left untouched.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        _as_created(temporary, directory=True)
        yield temporary
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(f"{path} already exists.")
            old = path + ".old-" + os.path.basename(temporary)
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
