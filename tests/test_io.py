"""Atomic writes: the target is replaced whole or not at all, with ordinary permissions."""

import errno
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from textinv.io import atomic_path, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "emb.safetensors"
    write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["emb.safetensors"]


@pytest.mark.parametrize("replace", [True, False])
def test_the_folder_is_flushed_once_the_file_is_renamed_into_it(tmp_path, monkeypatch, replace):
    """A rename is an entry of the folder: on a power cut it is lost unless the folder is flushed after it (POSIX)."""
    import stat

    synced = []  # (is it a folder, is the file there yet) at each fsync
    real = os.fsync

    def fsync(handle):
        synced.append((stat.S_ISDIR(os.fstat(handle).st_mode), (tmp_path / "a.txt").exists()))
        real(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_path(tmp_path / "a.txt", replace=replace) as tmp:
        tmp.write_text("x")
    assert synced == [(False, False), (True, True)]  # the file's bytes before the rename, the folder after it


def test_a_folder_that_cannot_be_flushed_keeps_the_file_written(tmp_path, monkeypatch):
    """Some file systems refuse fsync on a folder (EINVAL): the rename stands, and no error."""
    import stat

    real = os.fsync

    def fsync(handle):
        if stat.S_ISDIR(os.fstat(handle).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_written_file_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_file_made_anew_by_the_writer_gets_the_umask_permissions(tmp_path):
    # safetensors' save_file writes a file of its own (mode 0600) in place of the temporary one it is given
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "learned_embeds.safetensors") as tmp:
            save_file({"emb": torch.ones(2, 4)}, tmp)
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    mode = (tmp_path / "learned_embeds.safetensors").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o640
    assert torch.equal(load_file(tmp_path / "learned_embeds.safetensors")["emb"], torch.ones(2, 4))


def test_a_file_where_the_folder_goes_is_said_to_be_one(tmp_path):
    """mkdir's own error for it, "File exists", read as if the folder were there (`textinv convert E x/e.pt`, x a
    file: "cannot write x/e.pt: File exists")."""
    (tmp_path / "x").write_text("")
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'x'} is a file, not a folder"):
        write_text(tmp_path / "x" / "e.pt", "e")


@pytest.mark.parametrize("links", [True, False])  # (False: a file system without hard links, as FAT)
def test_a_write_that_must_not_replace_keeps_a_file_written_meanwhile(tmp_path, monkeypatch, links):
    from textinv import io as textinv_io

    if not links:
        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted", src, None, dst)

        monkeypatch.setattr(textinv_io.os, "link", no_link)
    with atomic_path(tmp_path / "a.png", replace=False) as tmp:
        tmp.write_text("mine")
    with pytest.raises(FileExistsError, match="a.png"):
        with atomic_path(tmp_path / "a.png", replace=False) as tmp:
            tmp.write_text("another")
    assert (tmp_path / "a.png").read_text() == "mine" and os.listdir(tmp_path) == ["a.png"]


def test_a_ctrl_c_just_as_the_temporary_file_is_made_leaves_no_temporary(tmp_path, monkeypatch):
    """A Ctrl-C (or a second SIGTERM in training) that came between the temporary file's creation and the write's
    cleanup taking charge of it (inside mkstemp, which had not yet said its name) left `.a.txt.XXXXXXXX.tmp`
    behind: seen killing real `textinv train` runs at random moments, twice in 70 kills."""
    from textinv import io as textinv_io

    real = os.open

    def open_then_interrupted(*a, **k):  # (the signal arrives the moment the file is made)
        os.close(real(*a, **k))
        raise KeyboardInterrupt

    monkeypatch.setattr(textinv_io.os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text(tmp_path / "a.txt", "x")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_a_killed_writes_temporary_is_cleared_and_a_live_ones_and_a_users_files_are_kept(tmp_path):
    """A kill mid-write leaves `.NAME.XXXXXXXX.tmp`; the next run clears those of its own files' names, but not one
    a write in progress holds (another run drawing into the folder: here, this process), nor files of other names."""
    import re
    import subprocess
    import sys

    from textinv.io import clear_stale_temporaries

    killed = subprocess.run([sys.executable, "-c", "import os, signal\nfrom textinv.io import atomic_path\n"
                             f"with atomic_path({str(tmp_path / '000-a-s0.png')!r}) as tmp:\n"
                             " tmp.write_bytes(b'half')\n os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed.returncode == -9
    [stale] = tmp_path.glob(".*.tmp")
    users = [tmp_path / ".notes.txt.abcdefgh.tmp", tmp_path / ".000-a-s0.png.tmp"]
    for path in users:
        path.write_text("mine")
    with atomic_path(tmp_path / "000-a-s1.png") as live:
        live.write_bytes(b"being written")
        assert clear_stale_temporaries(tmp_path, re.compile(r".*\.png")) == 1
        assert not stale.exists() and live.exists() and all(path.exists() for path in users)
    assert (tmp_path / "000-a-s1.png").read_bytes() == b"being written"


def _is_held(path) -> bool:
    """Whether a write holds `path` locked (flock refuses a second open file even in this process)."""
    import fcntl

    handle = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(handle)


def test_a_temporary_cleared_between_its_making_and_its_lock_is_made_again_and_held(tmp_path, monkeypatch):
    """Another run's clear_stale_temporaries may find the temporary file the instant after it is made, before this
    write locks it, and remove it: the write then takes a new one, which it holds, not the name of a file gone."""
    import fcntl

    from textinv import io

    real = fcntl.flock
    cleared = []

    def cleared_first(handle, operation):
        if not cleared:  # (the other run's clear wins the race once)
            [made] = tmp_path.glob(".*.tmp")
            made.unlink()
            cleared.append(made)
        real(handle, operation)

    monkeypatch.setattr(io.fcntl, "flock", cleared_first)
    with atomic_path(tmp_path / "000-a-s0.png") as tmp:
        monkeypatch.setattr(io.fcntl, "flock", real)
        assert cleared and tmp.exists() and _is_held(tmp)
        tmp.write_bytes(b"x")
    assert (tmp_path / "000-a-s0.png").read_bytes() == b"x" and not list(tmp_path.glob(".*.tmp"))


def test_a_stale_temporary_is_removed_while_its_lock_is_held(tmp_path, monkeypatch):
    """clear_stale_temporaries removes a stale temporary file before it lets go of its lock: let go first, and a
    write that locked the file meanwhile (made the instant before another clear took it) would lose it."""
    import re

    from textinv import io
    from textinv.io import clear_stale_temporaries

    stale = tmp_path / ".000-a-s0.png.abcdefgh.tmp"
    stale.write_bytes(b"half")
    real = os.close
    there_when_let_go = []

    def close(handle):
        there_when_let_go.append(stale.exists())
        real(handle)

    monkeypatch.setattr(io.os, "close", close)
    removed = clear_stale_temporaries(tmp_path, re.compile(r".*\.png"))
    monkeypatch.setattr(io.os, "close", real)
    assert removed == 1 and not stale.exists() and there_when_let_go == [False]


def test_writes_succeed_where_the_file_system_has_no_locks_and_nothing_is_cleared_there(tmp_path, monkeypatch):
    """On a file system where flock fails (some network mounts), a write goes on unlocked, leaves no open file, and
    clear_stale_temporaries removes nothing there: it cannot tell a live write's temporary from a killed one's."""
    import re

    from textinv import io
    from textinv.io import clear_stale_temporaries

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    stale = tmp_path / ".000-a-s0.png.abcdefgh.tmp"
    stale.write_bytes(b"half")
    monkeypatch.setattr(io.fcntl, "flock", no_locks)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(50):
        write_text(tmp_path / f"{i:03d}-a-s0.png", "x")
    assert len(os.listdir("/proc/self/fd")) == before
    assert clear_stale_temporaries(tmp_path, re.compile(r".*\.png")) == 0 and stale.exists()
    assert len(list(tmp_path.glob("*.png"))) == 50


def test_a_long_run_of_locked_writes_leaves_no_file_open(tmp_path):
    """Each write's temporary file is held open while it is written and closed after, failed writes too: a run
    writing thousands of pictures keeps no handle per picture."""
    before = len(os.listdir("/proc/self/fd"))
    for i in range(2000):
        write_text(tmp_path / f"{i:04d}.txt", "x")
    for i in range(20):
        with pytest.raises(FileExistsError), atomic_path(tmp_path / f"{i:04d}.txt", replace=False) as tmp:
            tmp.write_bytes(b"y")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "z.txt") as tmp:
        raise RuntimeError("the writer failed")
    assert len(os.listdir("/proc/self/fd")) == before and len(os.listdir(tmp_path)) == 2000
