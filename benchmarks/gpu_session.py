"""Everything a short GPU lease should do, in one command, each part bounded in time, results under --out.

A session is lent about 15 minutes of one GPU, start-up included, and a command may run 10 of them, so the work
is prepared here and run as one call (the device tool copies the repo; diffusers travels as a wheel):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit
    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_session --out $OUT --minutes 9

(`--minutes`: what the lease leaves, less a minute for packing; the device tool's status says what is left.)
Parts, in order (a part that fails or runs out of its time is recorded, and the next one still runs):
1. `speed` (issue 4): `benchmarks.train_speed` on the full-size SD 1.5 architecture: ours, ours with
   `--cuda-graphs` and ours with cuDNN's autotuning at batch 1, 8 and 32 (the first lease, 2026-12-04, found
   batches below ~24 launch-bound, and measured the reference-like mode beside ours); `benchmarks.step_overhead
   --top` at 32, which lists the kernels that take its time; gradient checkpointing at 32 and SDXL at 1024x1024
   (batch 4, with and without checkpointing), whose memory `benchmarks.step_memory` has only worked out;
   `--cuda-graphs` with regional compile. Each command
   keeps 45 s for each one after it, and one that overruns is killed with its worker processes. (The whole-UNet
   compile, `fast`, had not finished compiling after 105 s on that lease, and the reference recipe's 12,000
   samples as `textinv train` runs them need ~100 s: both are left to a longer lease.)
   Before it, `graphs-check` runs tests/test_graphs.py's GPU tests: whether the trainer's step captures, and
   learns what the plain step learns, in fp32, fp16, bf16, SDXL, v-prediction and with gradient checkpointing;
   and tests/test_memory.py's: SD 1.5 held to 12 GiB runs out at batch 32, and trains at the batch its message
   works out.
2. `shapes` (issue 3): a new, bigger UNet + text encoder for the shapes model on its committed VAE
   (`pretrain --from-model textinv/shapes/model --keep vae`, then `--stage unet --device cuda`), exported and
   packed as `shapes-model.tar.gz` (the diffusers folder; `pretrain --from-model` goes on training from it on any
   machine). Before it replaces `textinv/shapes/model`, judge it on the CPU (`textinv evaluate --model DIR
   --captions 1024 --concepts 0`, then the quality table) and time it against the issue's CPU limits.
   `--shapes-from DIR` goes on training a model a lease packed before (unpacked and carried along) instead of
   starting a new UNet, so several leases add up; `--speed-share 0` gives a lease to it alone. `--angle-share S`
   trains with that share of the patterned objects' captions naming the fill's orientation (`pretrain --set
   angle_caption_share=S`, README "The bundled model and its benchmark"): the test of the reading that the fills
   come out as mazes because no caption names their angle. With `--shapes-from textinv/shapes/model` it goes on
   training the committed model, its text encoder grown by the orientation words' rows.
`--quick` runs both parts on the CPU with tiny sizes and a few steps, without the compiled mode (whose CPU compile
takes minutes), each command in this one process (`run_here`: torch imported once): the test suite does; nothing
is judged. `session.txt` is rewritten as each part starts and ends, so a session killed midway still says what
finished; each command's rows are in its part's log as they come.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import runpy
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from pathlib import Path

# The UNet the shapes part trains: two ResNet blocks per level, as SD has (the drawn patterns are incoherent: the
# committed UNet has three blocks in all at 16x16), and a wider bottom; 4.2M parameters against 1.7M. On one CPU
# thread (2026-12-02): one picture at 25 steps 1.39 s against 0.76 s, a TI step at batch 4 146 ms against 77 ms.
# Attention at 16x16 too costs 3.3x the committed compute there: too slow for the CPU limits.
SHAPES_UNET = ("unet_channels=32,64,96", "unet_attention=0,1,1", "unet_layers=2")
QUICK_UNET = ("unet_channels=16,16", "unet_attention=0,1", "unet_layers=1", "unet_groups=8", "unet_heads=2")


_RUNNING: list[subprocess.Popen] = []  # the command running now (the signal handler stops it)


def _stop(proc: subprocess.Popen) -> None:
    """Kill a command with everything it started (its own process group: torch.compile's worker processes, a
    `textinv train` it runs), so nothing of it goes on using the GPU or the CPUs in the next command's time."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class _CommandsStderr(io.TextIOBase):
    """sys.stderr while a command runs here: its writes go to that command's log, and at any other time to the
    stderr in place then. A logging handler made meanwhile keeps the stream it found (transformers' and diffusers'
    make theirs at their first warning): were that the log, later parts' warnings went to a closed file ("--- Logging
    error ---", the warning lost)."""

    def __init__(self):
        self.log = None

    def _target(self):
        if self.log is not None:
            return self.log
        return sys.stderr if sys.stderr is not self else sys.__stderr__

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def fileno(self) -> int:  # (what needs the file itself, e.g. faulthandler, gets the log's)
        return self._target().fileno()

    def isatty(self) -> bool:
        return self._target().isatty()


_STDERR = _CommandsStderr()


def run_here(command: list[str], log) -> int:
    """`command` (`python -m MODULE ARGS...` or `python -c CODE`) run in this process as its own process would run
    it, its prints appended to `log`: its exit status. --quick's way (a smoke test): a new process spends seconds
    importing torch, most of the test's time. Not bounded in time, and not kept apart: what a command leaves set
    (torch's thread count) the next one finds."""
    how, target, *rest = command[1:]
    argv = sys.argv
    sys.argv = [target, *rest]
    _STDERR.log = log
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(_STDERR):
            try:
                if how == "-m":
                    runpy.run_module(target, run_name="__main__", alter_sys=True)
                else:
                    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
            except SystemExit as e:  # (as the interpreter: a message is printed and exits 1)
                if e.code is None or isinstance(e.code, int):
                    return e.code or 0
                print(e.code, file=sys.stderr)
                return 1
            except Exception:
                traceback.print_exc()
                return 1
        return 0
    finally:
        sys.argv, _STDERR.log = argv, None
        log.flush()


def _run_bounded(command: list[str], log, shown: str, allowed: float) -> str | None:
    """`command` in a process of its own, killed with what it started after `allowed` seconds: what went wrong."""
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _RUNNING.append(proc)
    try:
        code = proc.wait(timeout=allowed)
        return f"failed (exit {code}): {shown}" if code else None
    except subprocess.TimeoutExpired:
        _stop(proc)
        return f"stopped at its time limit ({allowed:.0f} s): {shown}"
    finally:
        _RUNNING.remove(proc)


def run_part(name: str, commands: list[list[str]], seconds: float, log_path: Path, keep_going: bool = False,
             reserve: float = 0.0, here: bool = False) -> dict:
    """Run `commands` one after another, all within `seconds`, their output appended to `log_path`. A command that
    fails or overruns ends the part, unless `keep_going` (independent measurements): then the next one runs in
    the time left. `reserve`: seconds kept back for each command still to come, so one that hangs (a long
    compile) cannot take all of their time; a command overrunning its time is killed with what it started.
    `here`: each command runs in this process instead (`run_here`: --quick), unbounded."""
    started = time.monotonic()
    record = {"part": name, "status": "ok"}
    with open(log_path, "a") as log:
        for i, command in enumerate(commands):
            later = len(commands) - 1 - i
            shown, left = " ".join(command), seconds - (time.monotonic() - started)
            allowed = max(left - reserve * later, min(left, reserve))
            log.write(f"\n$ {shown}   # {allowed:.0f} s of {left:.0f} s left for {name}\n")
            log.flush()
            if allowed <= 5:
                record["status"] = f"skipped (no time left): {shown}"
                break
            if here:
                code = run_here(command, log)
                problem = f"failed (exit {code}): {shown}" if code else None
            else:
                problem = _run_bounded(command, log, shown, allowed)
            if problem:
                record["status"] = problem if record["status"] == "ok" else f"{record['status']}; {problem}"
                if not keep_going:
                    break
    record["seconds"] = round(time.monotonic() - started, 1)
    print(f"[{name}] {record['status']} in {record['seconds']} s (log: {log_path})", flush=True)
    return record


def write_session(out: Path, records: list[dict], running: str | None = None) -> None:
    """`out/session.txt`: every finished part's status, and the part running now, rewritten as each starts and
    ends, so a session killed midway (the lease's end, SIGKILL) still says what finished and where it stopped."""
    lines = [f"{r['part']}: {r['status']} ({r['seconds']} s)" for r in records]
    if running:
        lines.append(f"{running}: running or stopped here (its log has what it printed)")
    tmp = out / "session.txt.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "session.txt")


def _on_signal(signum, frame):
    for proc in list(_RUNNING):
        _stop(proc)
    raise SystemExit(128 + signum)


def pack(out: Path, name: str, folder: Path) -> Path | None:
    """`folder` as `out/<name>.tar.gz`, holding it under the name `<name>`."""
    if not folder.exists():
        return None
    path = out / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=name)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu-session")))
    p.add_argument("--minutes", type=float, default=9.0, help="the whole session's budget (default 9)")
    p.add_argument("--speed-share", type=float, default=0.6, help="part of the budget for the speed part")
    p.add_argument("--shapes-from", type=Path, help="a shapes model an earlier lease packed (its folder): the "
                   "shapes part goes on training it instead of starting a new UNet")
    p.add_argument("--angle-share", type=float, default=0.0, help="the shapes part's share of patterned objects' "
                   "captions that name the fill's orientation (pretrain's angle_caption_share; default 0: none)")
    p.add_argument("--work", type=Path, default=Path("/tmp/textinv-gpu-session"), help="scratch folder")
    p.add_argument("--quick", action="store_true", help="CPU, tiny sizes, a few steps: a smoke test")
    args = p.parse_args(argv)
    if not 0.0 <= args.angle_share <= 1.0:  # (now, not after the speed part's minutes)
        p.error(f"--angle-share must be a share in [0, 1], got {args.angle_share}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    budget = args.minutes * 60
    if not args.quick:  # why a graph compiled again, in the logs: a recompile in the timed steps is only counted there
        os.environ.setdefault("TORCH_LOGS", "recompiles")
    print(f"# gpu_session {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, budget "
          f"{budget:.0f} s, results in {args.out}", flush=True)
    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set signal handlers)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    records: list[dict] = []

    def part(name: str, *a, **kw) -> None:
        write_session(args.out, records, running=name)
        records.append(run_part(name, *a, here=args.quick, **kw))
        write_session(args.out, records)

    try:
        part("environment", [[py, "-c", "import torch, diffusers, transformers; print(torch.__version__, "
                              "diffusers.__version__, transformers.__version__, torch.cuda.is_available() "
                              "and torch.cuda.get_device_name())"]] + ([] if args.quick else [["nvidia-smi"]]), 60,
             args.out / "environment.txt")

        if not args.quick and args.speed_share > 0:  # --cuda-graphs on the GPU: captured, the plain step's numbers?
            # (and the out-of-memory message's worked-out batch, on SD 1.5 held to 12 GiB: ~30 s)
            part("graphs-check", [[py, "-m", "pytest", "-q", "-rw", "-p", "no:cacheprovider", "tests/test_graphs.py",
                                   "tests/test_memory.py", "-k", "gpu"]], min(150.0, budget * 0.18),
                 args.out / "graphs_check.txt")

        steps = ["--steps", "1", "--warmup", "1"] if args.quick else ["--steps", "10", "--warmup", "3"]
        # (--quick: one command with a row of each mode; each command is a new process that loads torch and builds
        # its models, the largest cost of the test suite's session test. No --wall-samples: the plan below runs
        # none, and tests/test_benchmarks.py runs one of its own)
        plan = [("tiny", ["2"], ["textinv", "reference"], [])] if args.quick else [
            # --cuda-graphs through the trainer (no compiling) beside our plain step; the reference-like mode was
            # measured beside it on the first lease (6 rows took 57 s with the model's build: 9 fit in ~70); the
            # first row's setup and first step profiled (the first lease's first step took 12.1 s at batch 32, 1.7 s
            # at 8 after it: seconds of a fresh process's start that the 90 s whole run pays once)
            ("sd15", ["1", "8", "32"], ["textinv", "graphs", "cudnn-benchmark"], ["--profile-first"]),
            # memory worked out on the CPU (`benchmarks.step_memory`), measured where it is not yet: checkpointing
            # (9.3 GiB at 32) and SDXL at 1024x1024 (26.7 GiB at 4, 9.0 with checkpointing), and SDXL's speed
            ("sd15", ["32"], ["checkpointing"], []),
            ("sdxl", ["4"], ["textinv", "checkpointing"], []),
            ("sd15", ["1", "8", "32"], ["graphs-blocks"], []),  # with regional compile (~50 s to compile)
            # (the 12,000-sample wall run, `--wall-samples 12000`, needs ~100 s at the speeds measured so far: a
            # lease with time to spare; BENCHMARKS.md lists it)
        ]
        speed = [[py, "-m", "benchmarks.train_speed", "--arch", arch, "--batch", *batches, *steps, "--modes", *modes,
                  *extra] for arch, batches, modes, extra in plan]
        if not args.quick:  # which kernels take batch 32's time (it is the kernels' own time: 31% of the limit)
            speed.insert(1, [py, "-m", "benchmarks.step_overhead", "--arch", "sd15", "--batch", "32", "--top", "25"])
        if args.speed_share > 0:
            checked = sum(r["seconds"] for r in records if r["part"] == "graphs-check")  # (issue 4's, too)
            part("speed", speed, budget * args.speed_share - checked, args.out / "speed.txt", keep_going=True,
                 reserve=0 if args.quick else 45)

        # a fresh work folder: /tmp survives on a warm machine, and pretrain refuses to start over a run it finds
        work = args.work / f"shapes-{os.getpid()}-{time.time_ns()}"
        model = work.parent / f"{work.name}-model"
        left = budget - sum(r["seconds"] for r in records)
        pretrain = [py, "-m", "textinv.shapes.pretrain", "--work", str(work)]
        # a new UNet of SHAPES_UNET's sizes on the committed VAE, or the model a lease packed before, as it is
        start = ["--from-model", str(args.shapes_from)] if args.shapes_from else [
            "--from-model", "textinv/shapes/model", "--keep", "vae"]
        if args.angle_share:  # (on the new folder, whose config every chunk then reads; a kept text encoder grows)
            start += ["--set", f"angle_caption_share={args.angle_share:g}"]
        sets = [] if args.shapes_from else [x for s in (QUICK_UNET if args.quick else SHAPES_UNET) for x in ("--set", s)]
        quick = ["--minutes", "0.03"] if args.shapes_from else ["--steps", "2"]  # (--steps counts the whole stage)
        # 16 cores: 14 threads render a batch each, one torch thread apiece (14 x 14 intra-op threads would
        # oversubscribe), the rest for the thread that draws the random numbers and the step's. Batch 512: a step of
        # this UNet is ~1,500 kernels (counted on the CPU), so the host's launches (~30 us each on the first lease's
        # machine) likely hold it near 20 steps/s whatever the batch, while its arithmetic is a few ms: twice the
        # pictures a step for the same steps, and the step captured as a CUDA graph (`--cuda-graphs`; if the
        # capture fails, its log says why and the step runs eagerly) (BENCHMARKS.md, "A GPU lease in one call")
        train = [*quick, "--batch", "4"] if args.quick else [
            "--device", "cuda", "--batch", "512", "--threads", "1", "--render-threads", "14", "--cuda-graphs",
            "--minutes", f"{max(1.0, (left - 75) / 60):.2f}"]
        part("shapes", [
            pretrain + start,
            pretrain + ["--stage", "unet", *train, *sets],
            pretrain + ["--export", "--out", str(model)],
        ], left, args.out / "shapes.txt")
        path = pack(args.out, "shapes-model", model)
        print(f"[shapes] shapes-model.tar.gz: {'written' if path else 'nothing to pack'}", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
