"""Running out of GPU memory: torch's error turned into a `DeviceMemoryError` that says where it ran out, how much
the device has, and the settings that need less there.

torch raises `torch.OutOfMemoryError` on CUDA (`torch.cuda.OutOfMemoryError` is the same class) and a plain
RuntimeError whose message begins "MPS backend out of memory" on Apple's MPS backend. `train`, `generate` and
`score` keep a note of what they are doing as they go; their top-level function turns the error into the message
once the frames that held the failing step's tensors are gone (`release`), so a notebook can try again with other
settings in the same process. Nothing is retried with other settings: that would change the result unasked.
"""

from __future__ import annotations

import re
import traceback
from typing import Callable, TypeVar

import torch

from .errors import DeviceMemoryError

MPS_MESSAGE = "MPS backend out of memory"
T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the device running out of memory (CUDA's or MPS's), and nothing else.

    >>> is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17.9 GB, ...)"))
    True
    >>> is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    False
    """
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and str(error).lstrip().startswith(MPS_MESSAGE))


def release(error: BaseException, device: torch.device | str | None = None) -> None:
    """Let go of what the frames `error` came through hold (a step's activations and gradients: gigabytes), and
    of the chain of errors it was raised in: a notebook keeps the last error (`sys.last_exc`), and with it every
    tensor those frames held, until the next error. Frames still running are left as they are. With a CUDA
    `device`, the memory torch's allocator then holds unused goes back to the GPU, where other programs see it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
            error.__traceback__ = None
        error = error.__context__
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def smaller_side(pixels: int) -> int:
    """A side about 3/4 of `pixels` to suggest, in whole steps of 64 (SD's latents' and UNet's) from 256 up, of 8
    below (the tiny test models' sizes): 512 -> 384, 1024 -> 768.

    >>> smaller_side(512), smaller_side(1024), smaller_side(16)
    (384, 768, 8)
    """
    grain = 64 if pixels >= 256 else 8
    return max(grain, pixels * 3 // 4 // grain * grain)


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def device_note(device: torch.device | str, error: BaseException | None = None) -> str:
    """What the device can tell of its memory: its size and this process's peak use on CUDA, the limit and the use
    now on MPS, nothing elsewhere; and the allocation that failed, from torch's message.

    >>> device_note("cpu", RuntimeError("MPS backend out of memory (...). Tried to allocate 256.00 MB on private pool"))
    'torch tried to allocate 256.00 MB more'
    """
    device = torch.device(device)
    parts = []
    tried = re.search(r"Tried to allocate ([\d.]+ ?[KMGT]?i?B)", str(error or ""))
    if tried:
        parts.append(f"torch tried to allocate {tried.group(1)} more")
    try:
        if device.type == "cuda":
            total = torch.cuda.mem_get_info(device)[1]
            peak = torch.cuda.max_memory_allocated(device)
            parts.append(f"{device} has {_gib(total)} and this process's tensors took up to {_gib(peak)} of it")
            if peak < total / 2:  # (the rest is not this run's: a web UI or another run may hold it)
                parts.append("other programs may hold much of the rest (nvidia-smi lists them)")
        elif device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
            parts.append(f"MPS may use {_gib(torch.mps.recommended_max_memory())}, this process holds "
                         f"{_gib(torch.mps.driver_allocated_memory())} there")
    except RuntimeError:  # (a device that cannot say: only what is known)
        pass
    return "; ".join(parts)


def out_of_memory_as(run: Callable[[], T], describe: Callable[[BaseException], DeviceMemoryError],
                     device: Callable[[], torch.device | str | None]) -> T:
    """`run()`'s result; if it runs out of device memory, `describe(error)` raised instead, once `release` has let go
    of what the failed frames held and given the allocator's unused memory on `device()` back (read then: where the
    run got to). Raised outside the handler, so it carries no context: the error a notebook keeps holds none of the
    failed work's tensors, and another try fits where this one did. `train`, `generate` and `score` end so.

    >>> out_of_memory_as(lambda: 4, lambda e: DeviceMemoryError(str(e)), lambda: None)
    4
    """
    failure = None
    try:
        return run()
    except RuntimeError as e:  # (torch.OutOfMemoryError is one)
        if not is_out_of_memory(e):
            raise
        release(e, device())
        failure = describe(e)
    raise failure


def memory_error(device: torch.device | str, doing: str, fixes: list[str], after: str = "",
                 error: BaseException | None = None, changes: str = "the result") -> DeviceMemoryError:
    """The error to raise: where it ran out (`doing`), what the device tells (`device_note`), the `fixes` that
    apply there, the one that changes `changes` least first, and `after`: what was kept, and how to go on."""
    note = device_note(device, error)
    text = f"out of memory on {torch.device(device)} {doing}" + (f": {note}" if note else "")
    if fixes:
        text += (f". Settings that need less memory, from the one that changes {changes} least: "
                 + "; ".join(fixes))
    if after:
        text += ". " + after
    return DeviceMemoryError(text)
