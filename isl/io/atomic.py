"""Atomic outputs: write to a temporary name beside the target, rename at the end.

Nothing half-written is ever left under the final name: if the work fails,
the temporary file or directory is removed. Files and directories get the
permissions the user's umask allows (as `open` and `os.makedirs` would give
them), not the private 0600 / 0700 of `tempfile`. A process killed outright
(SIGKILL, power loss) cannot clean up: it may leave a `.tmp-*` file or
folder beside the target, never a partial target. The next write of the same
target removes such leftovers, and `output_directory` puts back a previous
output that a kill caught between its two renames.
"""

from __future__ import annotations

import contextlib
import glob
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
    with temporary_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)


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
    remove_leftovers(path)
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


def _old_name(path: str, temporary: str) -> str:
    return path + ".old-" + os.path.basename(temporary)


def recover_previous(path: str | os.PathLike[str]) -> bool:
    """Puts back a previous output that a kill left renamed aside; True if it did.

    `replace_directory` renames the old `path` to `path.old-*` and then the
    new one to `path`; a process killed between the two leaves no `path`.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        return False
    name = glob.escape(os.path.basename(path))
    olds = sorted(glob.glob(glob.escape(path) + ".old-.tmp-" + name + "-" + "?" * 8), key=os.path.getmtime)
    if not olds:
        return False
    os.replace(olds[-1], path)
    return True


def remove_leftovers(path: str | os.PathLike[str]) -> list[str]:
    """Removes the temporaries a killed writer of `path` left beside it.

    Files `.tmp-XXXXXXXX-NAME`, folders `.tmp-NAME-XXXXXXXX` and old outputs
    set aside, `NAME.old-.tmp-NAME-XXXXXXXX` (after `recover_previous`). One writer per target is assumed, as
    everywhere in isl. Returns the removed paths.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    recover_previous(path)
    # mkstemp/mkdtemp add 8 random characters.
    temporary_dir = ".tmp-" + glob.escape(name) + "-" + "?" * 8
    patterns = [".tmp-" + "?" * 8 + "-" + glob.escape(name), temporary_dir, glob.escape(name) + ".old-" + temporary_dir]
    removed = []
    for pattern in patterns:
        for leftover in glob.glob(os.path.join(glob.escape(directory), pattern)):
            remove_path(leftover)
            removed.append(leftover)
    return removed


def remove_path(path: str) -> None:
    """Removes a file, link or folder tree; no error when it is gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def staging_directory(directory: str, prefix: str) -> str:
    """A new private folder `PREFIX<pid>-XXXXXXXX` inside `directory`, for work that
    `install_directory` moves out piece by piece; `remove_dead_staging` cleans up after kills."""
    os.makedirs(directory, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=directory)


def remove_dead_staging(directory: str, prefix: str) -> list[str]:
    """Removes the `staging_directory` folders of processes that are gone (killed).

    Folders of running processes (and of other users' processes) stay.
    Returns the removed paths.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*")):
        pid = os.path.basename(path)[len(prefix):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        remove_path(path)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Another user's process.
    return True


def replace_directory(temporary: str, path: str, overwrite: bool = True) -> None:
    """Moves the finished folder `temporary` to `path`, replacing an old one.

    Two renames (old aside, new in), then the old one is deleted; a kill
    between them is undone by `recover_previous`.
    """
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"{path} already exists.")
        old = _old_name(path, temporary)
        os.replace(path, old)
        os.replace(temporary, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, path)


def _sibling_directory(path: str) -> str:
    """An empty temporary folder `.tmp-NAME-XXXXXXXX` beside `path` (after removing a killed writer's leftovers)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_leftovers(path)
    return tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)


def install_directory(source: str, path: str | os.PathLike[str]) -> None:
    """Moves the finished folder `source` (same file system) to `path`, replacing an old one."""
    path = os.path.abspath(os.fspath(path))
    temporary = _sibling_directory(path)
    try:
        os.replace(source, temporary)  # Onto the empty folder: allowed.
        replace_directory(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def output_directory(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[str]:
    """Yields a temporary directory that becomes `path` when the block succeeds.

    Files are written into the yielded directory. On success, an existing
    `path` is replaced (when `overwrite`), else the temporary directory is
    removed and `path` is left untouched.
    """
    path = os.path.abspath(os.fspath(path))
    temporary = _sibling_directory(path)
    try:
        _as_created(temporary, directory=True)
        yield temporary
        replace_directory(temporary, path, overwrite)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
