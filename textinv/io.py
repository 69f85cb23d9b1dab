"""Atomic file writes: a crash never leaves half a file where a good one was.

Every file textinv writes goes through `atomic_path`: the data goes to a temporary file in the same folder, is
flushed to disk, then renamed over the target in one step (`os.replace` is atomic on POSIX and Windows), and the
folder is flushed too (POSIX), so the rename itself outlasts a power cut.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: a file open in another process cannot be removed there, which keeps a live one
    fcntl = None

# the letters of a temporary file's name (mkstemp's, as `run_folder.clear_temporaries` finds them), drawn from the
# system's randomness: the random module's own numbers are a seeded run's, and a write must not move them
_NAME_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_NAMES = random.SystemRandom()
# what `atomic_path` names its temporary files: `.NAME.XXXXXXXX.tmp` (a process killed mid-write leaves one)
TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error it is removed. With
    `replace=False` a file at `path` (one another process wrote meanwhile) is kept: FileExistsError is raised, and
    the temporary file removed.

    >>> with atomic_path("out/emb.safetensors") as tmp:   # doctest: +SKIP
    ...     safetensors.torch.save_file(tensors, tmp)
    """
    path = Path(path)
    make_folder(path.parent)
    tmp = None  # named before it is made (not by mkstemp): a Ctrl-C the moment after still finds it to remove
    held = None  # (POSIX) the temporary file kept open and locked while it is written: a live one, not a kill's
    try:
        for _ in range(100):  # (as mkstemp: another name while one is taken)
            tmp = path.parent / f".{path.name}.{''.join(_NAMES.choices(_NAME_LETTERS, k=8))}.tmp"
            try:
                held = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except FileExistsError:
                tmp = None  # (another's: not removed below)
                continue
            except OSError:  # (not made: a folder made read-only, say)
                tmp = None
                raise
            held = _held(held)
            # still there once locked (its name drawn at random: a file there is this write's), or another run's
            # clear_stale_temporaries took it in the instant before the lock: a new one, the gone one not removed
            if held is None or os.path.lexists(tmp):
                break
            os.close(held)
            held = tmp = None
        else:
            raise FileExistsError(errno.EEXIST, "no unused temporary file name found", str(path))
        yield tmp
        # made 0600 (as mkstemp makes it); give the file the permissions open() would. Only now: a writer may have
        # made the file anew (safetensors' save_file does), with mode 0600 again, so a chmod before the write is lost.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:  # make the bytes durable before the rename publishes them
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
        tmp = None  # (published: nothing to remove below)
        sync_folder(path.parent)
    except OSError as e:  # (a full disk, a folder made read-only: named by the file meant, not its temporary name)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if e.filename == str(path):
            raise
        raise _as_meant(e, path) from e
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if held is not None:
            os.close(held)


def clear_stale_temporaries(folder: str | os.PathLike, names: re.Pattern) -> int:
    r"""Remove from `folder` (not below it) the temporary files of `atomic_path` writes a kill cut short, for the
    files whose names `names` matches in full (a command's own, never a user's file); a live write's, which its
    process holds locked, is left (POSIX; elsewhere its open file cannot be removed). The lock is on the file made:
    a writer that makes it anew (safetensors' save_file) writes an unlocked one, so use it for pictures (PIL writes
    in place). Returns how many were removed.

    >>> clear_stale_temporaries("renders", re.compile(r".*\.png"))  # doctest: +SKIP
    1
    """
    removed = 0
    for path in Path(folder).glob(".*.tmp"):
        found = TEMPORARY.fullmatch(path.name)
        if not found or not names.fullmatch(found[1]) or path.is_symlink() or not path.is_file():
            continue
        try:
            removed += remove_unheld(path)
        except OSError:  # (gone meanwhile: its write ended; on Windows, open in another process)
            pass
    return removed


def _held(handle: int) -> int | None:
    """The temporary file open at `handle`, locked for as long as it is written (`clear_stale_temporaries` leaves
    it): the handle to close when done, or None where it cannot be held (closed then): on Windows, where an open
    file cannot be renamed, and on a file system without locks."""
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
            return handle
    except OSError:
        pass
    os.close(handle)
    return None


def remove_unheld(path: Path) -> bool:
    """Remove the temporary file `path` unless a process holds it (`_held`), and say whether it was removed. It is
    removed while locked: let go first, and a write locking it meanwhile (made the instant before) would lose it.
    On Windows, where a file open in another process cannot be removed, it is removed unlocked."""
    if fcntl is None:
        path.unlink()
        return True
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink()
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(handle)


def _publish_new(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path` unless `path` exists (FileExistsError). A hard link is made, or refused, in one step;
    a file system without them (FAT, exFAT) takes a check, then the rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # (no hard links here)
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def sync_folder(folder: str | os.PathLike) -> None:
    """Flush `folder`'s entries to disk (POSIX), so a rename in it survives a power cut as its file's bytes do. A
    system or file system that cannot (Windows opens no folders; some network file systems refuse it) is left as it
    is: the rename has been made, only its durability is the system's."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks (a checkpoint of gigabytes is never whole in memory): what a
    picture records of its --init-image and --mask, and the web UI's hashes of an embedding and a checkpoint start
    from."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def make_folder(path: str | os.PathLike) -> None:
    """Create the folder `path` and its parents, as `mkdir -p`; a file of that name in the way raises
    NotADirectoryError saying so, where mkdir raises FileExistsError ("File exists"), which reads as if all were
    well."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is a file, not a folder", str(path)) from None


def _as_meant(error: OSError, path: Path) -> OSError:
    """`error` (same errno and reason) naming `path`, the file meant, not the temporary file it met."""
    return OSError(error.errno, error.strerror or str(error), str(path))


def read_text(path: str | os.PathLike) -> str:
    """A text file a person wrote: UTF-8, with or without the byte-order mark some Windows editors write, or UTF-16
    marked as such (Windows Notepad's "Unicode"); anything else raises UnicodeDecodeError (no guessing)."""
    data = Path(path).read_bytes()
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def output_folder_kept_if_used(path: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """`output_folder(path)` for the block's work: made now (a file in the way or no permission said before any slow
    work), and, where the block raises and the folder was made for it and is still empty, removed again, so a
    command refused once its model has loaded (a sampler the model cannot use) leaves no empty folder behind. A
    folder that was there stays; so does one the block wrote into (its pictures are kept)."""
    made = not Path(path).expanduser().exists()
    folder = output_folder(path, flag)
    try:
        yield folder
    except BaseException:
        if made:
            with contextlib.suppress(OSError):  # (not empty, or gone: left as it is)
                folder.rmdir()
        raise


def absolute(path: str | os.PathLike) -> str:
    """`path` made absolute, `~` expanded, links and `..` left as written (unlike `Path.resolve`): how a file
    recorded for later (a picture's settings, a report) is named, so it is found from any working directory."""
    return os.path.abspath(Path(path).expanduser())


def output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the folder `path` (and its parents) now, before any slow work, or raise ConfigError naming `flag` and
    why (a file in the way, no permission, a read-only disk); returns it, a `~` the shell left (quoted, after `=`)
    read as the home folder.

    >>> output_folder("~/renders")  # doctest: +SKIP
    PosixPath('/home/me/renders')
    """
    from .errors import ConfigError

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot create the folder ({e.strerror or e}); choose another {flag}") from None
    # a folder that was there may not let us write: said now too, not once the first file is written
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write into the folder (no permission); make it writable, or choose "
                          f"another {flag}")
    return path
