"""A training step's forward and backward captured once as a CUDA graph and replayed (`--cuda-graphs`).

Below batch ~24 at SD 1.5's size the step is launch-bound: its ~3,000 kernels take the host ~85 ms to launch, one
by one, while the GPU's work is 21 ms at batch 1 (an H200, 2026-12-04, `benchmarks/step_overhead.py`). Replaying a
captured graph launches them all at once: the step takes what its kernels take, with no compiler involved (so no
minutes of compiling, unlike `--compile unet --compile-mode reduce-overhead`).

A graph replays fixed memory: the step's inputs are copied into tensors captured once (`static`), and its outputs
(the per-concept losses and the vectors' gradients) are read from tensors the graph writes each replay. The
gradients are computed with `torch.autograd.grad` into those outputs and added to `.grad` after each replay, as
`backward()` adds them, so micro-batches accumulate and the optimizer, gradient clipping and loss scaling outside
the graph see what they always see. The frozen weights and the trained vectors are read where they live, so the
optimizer's in-place updates are what the next replay uses.

    >>> w = torch.full((3,), 2.0, requires_grad=True)
    >>> step = CapturedStep(lambda x: (x["a"] * w).sum()[None], [w], capture=False)
    >>> step({"a": torch.ones(3)}).tolist(), w.grad.tolist()
    ([6.0], [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import ConfigError, setting, warn
from .memory import is_out_of_memory

WARMUP = 2
"""Eager steps on a side stream before the capture (cuBLAS, cuDNN and the allocator set themselves up), as
PyTorch's CUDA-graph notes ask."""


def check_device(device: torch.device) -> None:
    """--cuda-graphs needs a CUDA device: refuse it elsewhere, naming the device."""
    if torch.device(device).type != "cuda":
        raise ConfigError(f"{setting('cuda_graphs')} captures the step as a CUDA graph, which needs an NVIDIA GPU; "
                          f"this run is on {torch.device(device).type}: leave {setting('cuda_graphs')} out")


class CapturedStep:
    """`step(inputs)` runs `loss_of(inputs)` (a (K,) tensor of losses) and the backward of its sum to `params`,
    adding the gradients into each parameter's `.grad`; returns the losses, detached.

    `inputs` is a dict of tensors, lists of tensors or None, of the same shapes at every call. `scale` maps the
    summed loss to what is differentiated (a gradient-accumulation divisor, a loss scaler's scale); it runs inside
    the graph, so a scale tensor updated in place is read afresh each replay. With `capture` False (the CPU, and
    the tests), the same path runs eagerly each call: the static copies, `autograd.grad` and the accumulation that
    replays use, so a test on the CPU checks everything but the capture. If capturing fails for a reason other than
    memory, a warning says why and the step runs eagerly from then on: the run goes on, as fast as without.
    `accumulate` False: each call's gradients replace `.grad` instead (the graph's own outputs, not copies: the
    caller uses them before the next call, which writes over them), for a step with no accumulation and many
    parameters, where a copy each would be a launch each (the shapes model's pretraining: 532 tensors).
    """

    def __init__(self, loss_of: Callable[[dict], torch.Tensor], params: list[torch.Tensor],
                 scale: Callable[[torch.Tensor], torch.Tensor] = lambda total: total, capture: bool = True,
                 accumulate: bool = True):
        self.loss_of, self.params, self.scale, self.capture = loss_of, params, scale, capture
        self.accumulate = accumulate
        self.static: dict | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, list[torch.Tensor | None]] | None = None
        self.failure: str | None = None  # why the capture failed ("RuntimeError: ..."), for a run's record

    def _compute(self) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        losses = self.loss_of(self.static)
        grads = torch.autograd.grad(self.scale(losses.sum()), self.params, allow_unused=True)
        return losses.detach(), list(grads)

    def _take(self, inputs: dict) -> None:
        """Copy `inputs` into the static tensors (made from the first call's)."""
        if self.static is None:
            self.static = {k: _clone(v) for k, v in inputs.items()}
            return
        for key, value in inputs.items():
            for into, new in zip(_tensors(self.static[key]), _tensors(value)):
                if into.shape != new.shape:
                    raise RuntimeError(f"--cuda-graphs: the step's {key} changed shape from {tuple(into.shape)} to "
                                       f"{tuple(new.shape)}; a captured step takes one shape")
                into.copy_(new)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self._compute()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self._compute()
        self.graph = graph

    def __call__(self, inputs: dict) -> torch.Tensor:
        self._take(inputs)
        if self.capture and self.graph is None:
            try:
                self._capture()
            except Exception as e:  # noqa: BLE001 (out of memory is the run's error; anything else: run eagerly)
                self.graph = self.outputs = None
                chain = _chain(e)
                memory = next((error for error in chain if is_out_of_memory(error)), None)
                if memory is not None:  # (as itself: the run's handler knows it, not the capture's end failing on it)
                    raise memory from None
                self.capture = False
                why = chain[-1]  # (the first error: the capture's end then fails on it with an error of its own)
                self.failure = f"{type(why).__name__}: {str(why).splitlines()[0][:200] if str(why) else ''}"
                warn(f"--cuda-graphs: the step could not be captured as a CUDA graph ({self.failure}); "
                     f"training goes on without graphs, as fast as a run without --cuda-graphs",
                     stacklevel=2)
        if self.graph is not None:
            self.graph.replay()
            losses, grads = self.outputs
        else:
            losses, grads = self._compute()
        for p, g in zip(self.params, grads):
            if not self.accumulate:
                p.grad = g  # (None where not reached: as zero_grad(set_to_none=True) and backward() leave it)
            elif g is None:  # (not reached from this loss: as backward() leaves it)
                continue
            elif p.grad is None:
                p.grad = g.clone()  # (a copy: the next replay writes over the graph's output)
            else:
                p.grad.add_(g)
        return losses.clone() if self.graph is not None else losses


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised while handling, last raised first. An error inside
    `torch.cuda.graph` reaches us as the one its exit raised on ending the broken capture, with the first one as
    its context."""
    chain = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = None if error.__suppress_context__ else error.__context__
    return chain


def _tensors(value) -> list[torch.Tensor]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _clone(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [v.clone() for v in value]
    return value.clone()
