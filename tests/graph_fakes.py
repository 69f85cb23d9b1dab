"""torch.cuda's capture faked on the CPU (`FakeCapture`), for the tests of --cuda-graphs and of the shapes
pretraining's captured step."""

import contextlib
import weakref

import torch

from textinv import graphs


class FakeCapture:
    """torch.cuda's capture and streams on the CPU, so the captured path runs as on a GPU: `CapturedStep` warms up,
    captures and replays. The capture runs the step's body once, then fills its outputs with NaN (a real capture
    only records kernels: nothing reads a value from it); each replay first checks that every tensor the capture
    read is still where it was (the step's static inputs and parameters, and `watch()`'s: a model's weights), then
    runs the body again on the tensors the capture read and writes its results into the outputs' memory, as a
    replayed graph writes into its pool."""

    def __init__(self, monkeypatch):
        self.watch = dict  # () -> {name: tensor} of what else the step reads (a test sets it)
        self.captures = self.replays = 0
        self.steps = []  # the CapturedSteps made, weakly
        self.capturing = None
        fake = self

        class Stream:
            def wait_stream(self, other):
                pass

        class Graph:
            def replay(self):
                fake._replay(self)

        @contextlib.contextmanager
        def graph(g):
            yield
            step = self.capturing
            g.step, g.static, g.memory = step, dict(step.static), self._memory(step)
            self.captures += 1

        real_capture, real_init = graphs.CapturedStep._capture, graphs.CapturedStep.__init__

        def capture(step):
            self.capturing = step
            try:
                real_capture(step)
            finally:
                self.capturing = None
            losses, grads = step.outputs
            for t in [losses] + [g for g in grads if g is not None]:
                t.fill_(float("nan"))

        def init(step, *args, **kwargs):
            real_init(step, *args, **{**kwargs, "capture": True})
            self.steps.append(weakref.ref(step))

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(graphs.CapturedStep, "_capture", capture)
        monkeypatch.setattr(graphs.CapturedStep, "__init__", init)

    def _memory(self, step) -> dict:
        named = {f"param{i}": p for i, p in enumerate(step.params)}
        named.update({f"static.{k}.{i}": t for k, v in step.static.items() for i, t in enumerate(graphs._tensors(v))})
        named.update(self.watch())
        return {name: t.data_ptr() for name, t in named.items()}

    def _replay(self, g):
        now = self._memory(g.step)
        moved = [name for name in g.memory if now.get(name) != g.memory[name]]
        assert not moved and now.keys() == g.memory.keys(), f"tensors the graph read were replaced: {moved}"
        current, g.step.static = g.step.static, g.static
        try:
            losses, grads = g.step._compute()
        finally:
            g.step.static = current
        out_losses, out_grads = g.step.outputs
        with torch.no_grad():
            out_losses.copy_(losses)
            for into, grad in zip(out_grads, grads):
                if into is not None:
                    into.copy_(grad)
        self.replays += 1
