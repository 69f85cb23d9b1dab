"""Stopping a training run where it can resume: Ctrl-C and SIGTERM noted and acted on at a step boundary
(`_StopRequest`), every data-parallel process agreeing on it over a CPU group (`_cpu_group`), the process group
ended as the process exits (`_ProcessGroup`), and the tidying up that a signal does not cut short (`_each`).

Moved out of train.py, which keeps the run and its loop.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading

import torch

from .errors import TrainingError
from .models import EarlyInterrupt


def _each(calls: list) -> None:
    """Call each of `calls` (None: skipped), the rest also when a Ctrl-C or SIGTERM interrupts one: a run's tidying
    up once it is saved (`_train`)."""
    for call in calls:
        if call is not None:
            with contextlib.suppress(KeyboardInterrupt):
                call()


class _ProcessGroup:
    """The data-parallel process group that `train` started (accelerate's `PartialState` starts it in the first run;
    a later run in the process goes on in it, as a launch cannot start it twice): ended as the process exits, while
    the interpreter is still whole (`end_at_exit`). Left to the interpreter's own exit, a gloo worker thread still
    letting go of the last collective's tensors needs the GIL while Python shuts down, and the process aborts
    ("terminate called without an active exception"; more often on a busy CPU); the launcher then reports a
    finished run as failed and stops the others, the main one maybe in its last save. NCCL warns that the group was
    not destroyed. Ended only when the last run ended with every process at one place (`together`: done, or stopped
    after the same step): after an error in one of them, or a second Ctrl-C, a process may be in a collective its
    peers never join, and ending the group could then hang where the launcher would have stopped it."""

    def __init__(self):
        self.together = False
        self.registered = False

    @staticmethod
    def running() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def end_at_exit(self) -> None:
        if not self.registered:
            atexit.register(self.end)
            self.registered = True

    def end(self) -> None:
        if self.together and self.running():
            torch.distributed.destroy_process_group()


_PROCESS_GROUP = _ProcessGroup()


def _cpu_group(state, stack: contextlib.ExitStack):
    """Data parallel: the CPU group the processes agree over, on whether the set-up failed in one of them and at
    every step boundary on whether to stop (a signal reaches them at different moments, or only one of them), so
    the check costs no GPU synchronisation; made before the set-up, as NCCL's takes every process (ended by
    `stack`). One process: None."""
    if state.num_processes == 1:
        return None
    if torch.distributed.get_backend() == "gloo":
        return torch.distributed.group.WORLD
    group = torch.distributed.new_group(backend="gloo")  # (NCCL's collectives need GPU tensors)
    stack.callback(torch.distributed.destroy_process_group, group)
    return group


class _StopRequest:
    """Ctrl-C and SIGTERM (what `kill`, job schedulers and container stops send) during training: noted, and the
    loop stops at the next step boundary (`check`), where the vectors, optimizer, schedule and data stream all
    belong to one step, so the checkpoint saved then resumes exactly. An interrupt raised wherever the signal landed
    could fall between the optimizer's update and the step count, and a resume would apply that update twice. A
    second Ctrl-C stops at once (the half-done step is then redone on resume). In data-parallel training every
    process asks the others at each boundary (`group`), so all stop at the same step even when the signal reaches
    them at different moments, or only one of them; otherwise a process would wait forever, or fail, for a step its
    peers never take, and the main process could stop without saving. Only the main thread gets signals; elsewhere
    nothing is installed. Before the first step they ask each other, the same way, whether the run's set-up failed
    in any of them (`setting_up`)."""

    def __init__(self, group=None):
        self.pending = group is not None  # data parallel: the set-up not yet agreed on by all (`agree_set_up`)
        self.asked = False
        self.signum = signal.SIGINT  # the first signal that asked
        self.agreed = False  # whether `check` stopped the run (every process at the same step)
        self.group = group  # data parallel: the processes that must stop together
        self.holding = False  # between a step's update and its log entry a second Ctrl-C waits (`hold`)
        self.deferred = False
        self.finished = False  # the last step's files are all saved: a signal now stops nothing that needs resuming
        self.ended = False  # the run has ended, saved or not, and only lets go of its folder and model (`end`)
        self._previous = {}

    def install(self, alone: bool = True) -> None:
        """The handlers, in the main thread (`release` puts back those installed, also if a signal cut this short).
        A Ctrl-C that `EarlyInterrupt` kept as the model loaded raises KeyboardInterrupt here, as one that Python
        raised during the loading would have; not `alone` (data parallel), it is this process's first signal
        instead: raised in it alone, the other processes waited for it in their next collective until the launcher
        killed them, unsaved."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
            early = getattr(self._previous[signal.SIGINT], "__self__", None)
            if isinstance(early, EarlyInterrupt) and early.noted:  # (a Ctrl-C before this step that Python dropped)
                if not alone:  # (every process stops at the first step boundary, saved there)
                    if not self.asked:  # (a signal that came since the handlers went in has asked already)
                        self._handle(signal.SIGINT, None)
                    return
                self.release()
                raise KeyboardInterrupt

    def _handle(self, signum, frame):
        if self.ended:  # (its outcome is decided: complete, stopped or failed, it is said as it would have been)
            doing = f"the run {'is complete and saved' if self.finished else 'has ended'}, finishing up"
            print(f"\n{signal.Signals(signum).name}: {doing}", file=sys.stderr, flush=True)
            return
        if self.asked:
            if self.holding:
                self.deferred = True
                return
            raise KeyboardInterrupt
        self.asked, self.signum = True, signum
        again = "Ctrl-C again" if signum == signal.SIGINT else f"a second {signal.Signals(signum).name}"
        doing = ("the run is complete and saved, finishing up" if self.finished
                 else "stopping after this step and saving")
        print(f"\n{signal.Signals(signum).name}: {doing}; {again} stops at once", file=sys.stderr, flush=True)

    def check(self) -> None:
        asked = self.asked
        if self.group is not None:  # stop if any process was asked to: all of them at this same step
            asked = bool(self._largest(torch.tensor([int(asked)])).item())
        if asked:
            self.agreed = True
            raise KeyboardInterrupt

    def _largest(self, flags: torch.Tensor) -> torch.Tensor:
        """`flags`, each the largest any process holds: every process asks the others (over the CPU `group`)."""
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return flags

    @contextlib.contextmanager
    def setting_up(self):
        """The run's set-up, from the folder's lock to the first step. Data parallel, a process whose set-up fails
        (a picture it cannot read, a check that fails there alone, the main process's lock, a Ctrl-C that reaches
        it alone) says so at the other processes' next `agree_set_up`, and raises its error once they have heard
        it; alone, it stopped while the others waited for it in their next collective until the launcher or a
        timeout ended them, in a mix of its error, timeouts and "process exited" messages."""
        try:
            yield
        except BaseException as error:
            if self.pending:
                with contextlib.suppress(RuntimeError):  # (a peer already gone: the launcher stops the rest)
                    self.agree_set_up(error)
            raise

    def agree_set_up(self, error: BaseException | None = None, last: bool = False, resumes: bool | None = None
                     ) -> None:
        """Data parallel: every process says whether its set-up failed (`error`, on its way out of `setting_up`),
        at points where they are all in step: the model and pictures loaded (before the main process writes a
        file), and the loop about to begin (`last`). Where one failed, the others raise a short TrainingError
        naming it, and every process stops: none is left in a collective. At the first, each also says whether it
        resumes the run (`resumes`): --resume-or-start is decided by each process from the folder as it finds it,
        and one that started while another resumed would train from other vectors, silently; then all stop. One
        process: nothing to ask."""
        if not self.pending:
            return
        world, rank = torch.distributed.get_world_size(self.group), torch.distributed.get_rank(self.group)
        said = torch.zeros(2 * world, dtype=torch.int)  # each process's outcome, then whether it resumes
        said[rank] = 0 if error is None else 2 if isinstance(
            error, KeyboardInterrupt) else 1  # 1: an error, 2: a Ctrl-C (KeyboardInterrupt)
        said[world + rank] = 0 if resumes is None else 1 + int(resumes)  # 0: not said, 1: starts, 2: resumes
        both = self._largest(said).tolist()
        said, resuming = both[:world], both[world:]
        split = error is None and not any(said) and {1, 2} <= set(resuming)
        self.pending = not last and not any(said) and not split
        if any(said) or split:
            _PROCESS_GROUP.together = True  # (every process stopped here: the group can end as they exit)
        if error is None and any(said):
            rank = next(r for r, s in enumerate(said) if s)
            what = "was interrupted" if said[rank] == 2 else "failed"
            raise TrainingError(f"process {rank} {what} as the run was set up (its own message says why); every "
                                f"process stopped before the first step, nothing was trained")
        if split:
            which = ", ".join(str(r) for r, s in enumerate(resuming) if s == 2)
            raise TrainingError(f"the processes found the output folder otherwise: process(es) {which} resume the "
                                f"run there, the others start it (--resume-or-start decides by what each finds); "
                                f"every process stopped before the first step, nothing was trained. Give them one "
                                f"--out on a file system they all see")

    def hold(self) -> None:
        self.holding = True

    def release_hold(self) -> None:
        self.holding = False
        if self.deferred:
            self.deferred = False
            raise KeyboardInterrupt

    def end(self) -> None:
        """The run has ended, saved or not, and only lets go of its folder and model, which takes moments: a signal
        now is noted and stops nothing, so the run ends as it would have (complete, or with its interruption or
        error said as the run says them), not with a bare KeyboardInterrupt or SIGTERM's kill."""
        self.ended = True

    def release(self) -> None:
        for sig, previous in reversed(self._previous.items()):  # (SIGINT's last: its own raises KeyboardInterrupt)
            signal.signal(sig, previous)
