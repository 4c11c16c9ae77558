"""Crash-safe folder writes: a process killed at any moment leaves the old folder or the new one.

Every writer of a model folder (``save_pretrained``, ``save_release``, ``eagle-hf convert``)
writes into a hidden sibling ``.<name>.eagle-tmp-<pid>-<random>`` and publishes it with one
atomic step: ``renameat2(RENAME_EXCHANGE)`` swaps it with an existing folder (Linux), a plain
``rename`` moves it into place when there is none. Temp folders left by killed processes (their
pid is gone) are removed by the next write to the same destination, or by
`remove_stale_temps`.

This protects against killed processes, not power loss: nothing is fsynced (that would cost a
full flush of multi-GB weights on every save).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_TAG = ".eagle-tmp-"
OLD_TAG = ".eagle-old-"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.eagle-(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")
# Weight files of a previous save, which a new save replaces rather than carries over (the names
# `PreTrainedModel.save_pretrained` writes; it removes stale ones from an existing folder too).
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")
_active = threading.local()  # destinations whose temp folder is being written by this thread


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Remove the temp folders of ``dest`` left by processes that no longer run; return them.

    An ``old`` folder (the previous version, moved aside by the fallback publish) is moved back
    when ``dest`` itself is missing, so the old folder is what remains."""
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        return []
    removed = []
    for entry in parent.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if not match or match["name"] != dest.name or _pid_alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not dest.exists():
            os.rename(entry, dest)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists() and not entry.is_dir():
            entry.unlink()
        removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _publish(tmp: Path, dest: Path) -> None:
    pause_point("before-publish")
    if not dest.exists():
        os.rename(tmp, dest)
        return
    if not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder")
    if _exchange(tmp, dest):
        pause_point("after-publish")
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous version
        return
    # No atomic exchange here: move the old folder aside first. A kill between the two renames
    # leaves no ``dest``; the next write (remove_stale_temps) moves the old one back.
    old = tmp.with_name(tmp.name.replace(TEMP_TAG, OLD_TAG, 1))
    os.rename(dest, old)
    pause_point("between-renames")
    os.rename(tmp, dest)
    pause_point("after-publish")
    shutil.rmtree(old, ignore_errors=True)


def _carry_over(dest: Path, tmp: Path) -> None:
    """Hard-link (or copy) into ``tmp`` what ``dest`` holds and the new save did not write,
    except old weight files, so that a save into a folder keeps the files it does not write (a
    model saved next to its processor, a trainer's checkpoints). Runs after the writers are done:
    savers open files with "w", which would write through a link into the old folder."""
    for entry in dest.iterdir():
        target = tmp / entry.name
        if _WEIGHT_FILE.match(entry.name) or _TEMP_NAME.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if target.is_dir() and not target.is_symlink():
                _carry_over(entry, target)
            elif not os.path.lexists(target):
                shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        elif not os.path.lexists(target):
            _link_or_copy(entry, target)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike, *, keep_existing: bool = True) -> Iterator[Path]:
    """Yield a temp folder to write ``dest``'s new contents into; publish it atomically on success.

    ``keep_existing``: add the files of ``dest`` that were not written anew (old weights
    excepted), as an in-place ``save_pretrained`` would keep them; otherwise the new folder
    replaces the old one whole.
    On an exception ``dest`` is left as it was and the temp folder is removed. Nested calls for
    the same destination (a release saving its model) write into the outer temp folder."""
    dest = Path(dest).absolute()
    active = getattr(_active, "paths", None)
    if active is None:
        active = _active.paths = {}
    if dest in active.values():  # already inside this destination's temp folder
        yield dest
        return
    if dest in active:
        yield active[dest]
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    tmp = dest.with_name(f".{dest.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    active[dest] = tmp
    try:
        yield tmp
        if keep_existing and dest.is_dir():
            _carry_over(dest, tmp)
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        active.pop(dest, None)


_passed: dict[str, int] = {}


def pause_point(name: str) -> None:
    """Test hook: with ``EAGLE_HF_PAUSE_AT=<name>``, announce the point on stderr and block, so a
    test can kill the process at exactly this moment (``tests/test_crash_safety.py``)."""
    if os.environ.get("EAGLE_HF_PAUSE_AT") != name:
        return
    # ``EAGLE_HF_PAUSE_SKIP=n``: pass the point n times first (e.g. the first checkpoint).
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] <= int(os.environ.get("EAGLE_HF_PAUSE_SKIP", "0")):
        return
    marker = os.environ.get("EAGLE_HF_PAUSE_FILE")
    if marker:
        Path(marker).write_text(name)
    while True:
        time.sleep(60)
