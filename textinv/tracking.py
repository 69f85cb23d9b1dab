"""Experiment trackers (`--log-with`): what loss.csv and samples/ hold, sent to TensorBoard, wandb or another
tracker accelerate supports, through accelerate's tracker classes (`accelerate.tracking`), as
`Accelerator.init_trackers` starts them.

Optional (STYLE 9): a tracker's package is looked for only when --log-with names it, and a missing one is refused
before the model loads, with the pip command. loss.csv and the grids in --out are written either way.

    textinv train ... --out runs/my-dog --log-with tensorboard     # events in runs/my-dog/logs/my-dog/
    tensorboard --logdir runs/my-dog/logs
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ConfigError, given, setting, warn

# accelerate's tracker names: the modules any of which provides one, and the package to install for it
TRACKERS = {
    # (accelerate's TensorBoard tracker writes with torch.utils.tensorboard, which needs `tensorboard`, and falls
    # back to tensorboardX, a writer alone, when that is missing)
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "aim": (("aim",), "aim"),
    "mlflow": (("mlflow",), "mlflow"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
}
LOGS_DIR = "logs"  # --log-dir's default, inside --out


def tracker_names(log_with: str | None) -> list[str]:
    """--log-with as tracker names; None and 'none' are no tracker.

    >>> tracker_names("tensorboard, wandb"), tracker_names("none")
    (['tensorboard', 'wandb'], [])
    """
    if log_with is None or log_with.strip().lower() == "none":
        return []
    return list(dict.fromkeys(name.strip().lower() for name in log_with.split(",") if name.strip()))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # (a parent package missing; a module without a spec in sys.modules)
        return False


def check_trackers(log_with: str | None, resume: bool = False) -> list[str]:
    """The trackers --log-with names, each known, in the installed accelerate's tracker table (a tracker newer than
    it is not) and its package installed; else a ConfigError naming it and the fix. Imports no tracker package:
    only looks for them. `resume`: a resumed run, whose --log-with left out is its config.yaml's.

    >>> check_trackers("none")
    []
    """
    names = tracker_names(log_with)
    if not names and log_with is not None and log_with.strip().lower() != "none":
        raise ConfigError(f"{given('log_with', log_with)} names no tracker; give one of: {', '.join(TRACKERS)}, or "
                          f"none")
    for name in names:
        if name not in TRACKERS:
            all_ = " ('all' is not taken: name them, e.g. tensorboard,wandb)" if name == "all" else ""
            raise ConfigError(f"{given('log_with', name)} is no tracker textinv knows{all_}; give one or more of: "
                              f"{', '.join(TRACKERS)} (comma-separated), or none")
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        if name not in LOGGER_TYPE_TO_CLASS:  # (accelerate>=1.0 is required; swanlab and trackio came later)
            from importlib.metadata import version

            raise ConfigError(f"{setting('log_with', name)}: the installed accelerate ({version('accelerate')}) has "
                              f"no {name} tracker yet; pip install -U accelerate, or {_off(name, resume)}")
        modules, package = TRACKERS[name]
        if not any(_installed(m) for m in modules):
            extra = " (or pip install 'textinv[tensorboard]'; the lighter tensorboardX also writes its logs)" \
                if name == "tensorboard" else ""
            raise ConfigError(f"{setting('log_with', name)}: the {package} package is not installed; pip install "
                              f"{package}{extra}, or {_off(name, resume)}")
    return names


def _cannot_start(name: str, error: Exception, resume: bool) -> str:
    login = " (log in first: wandb login, or set WANDB_API_KEY)" if name == "wandb" else ""
    again = ("" if resume else f"; the run took no step, so start it again with {setting('overwrite', True)}")
    return (f"{setting('log_with', name)}: the {name} tracker could not start ({type(error).__name__}: {error})"
            f"{login}; fix that, or {_off(name, resume)}{again}")


def _off(name: str, resume: bool) -> str:
    # (a resumed run left without --log-with takes its config.yaml's: only 'none' turns the tracker off)
    return (f"resume with {setting('log_with', 'none')} (the run's config.yaml names {name})" if resume
            else f"leave out {setting('log_with')}")


def run_name(out: str | Path) -> str:
    """The run's name in a tracker: its --out folder's name (TensorBoard's folder in --log-dir)."""
    return Path(out).resolve().name


class RunTracker:
    """The run's trackers, accelerate's tracker classes started on the main process alone (as
    `Accelerator.init_trackers` starts them), so every process may call these methods.

    No `Accelerator` is made for them: its AcceleratorState is one per process and fixes the mixed precision, so
    one made here would refuse a caller's Accelerator of another precision, before train() or after it."""

    def __init__(self, names: list[str], log_dir: Path, name: str, resumed_at: int | None = None):
        """`resumed_at`: the step of the checkpoint a resumed run starts from (None: a new run)."""
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers = []
        if not PartialState().is_main_process:
            return
        # TensorBoard reads every events file in its folder, in order: SummaryWriter's purge_step marks where this
        # writer starts, and events of that step or later in the files before it are dropped. A resumed run logs
        # again the steps after its checkpoint that a crash (a kill, power loss) logged but did not save, so the
        # curve has no doubled tail; a new run starts from 0, so what an earlier run left in the folder goes too
        purge = 0 if resumed_at is None else resumed_at + 1
        # tensorboardX names its file by the second and the host alone, and truncates a file of that name: a
        # resume within the same second would erase the logs it continues. The step it starts from and the process
        # make the name its own, and TensorBoard, which reads the files in name order, reads files of one second
        # by that step (torch's writer puts the process and a counter before it: its names are its own already)
        suffix = f".step{purge:09d}.{os.getpid()}"
        options = {"tensorboard": {"purge_step": purge, "filename_suffix": suffix}}
        for tracker_name in names:
            kind = LOGGER_TYPE_TO_CLASS[tracker_name]
            where = (str(log_dir),) if kind.requires_logging_directory else ()
            try:
                tracker = kind(name, *where, **options.get(tracker_name, {}))
                if callable(getattr(tracker, "start", None)):  # (newer accelerate opens the writer here, older in
                    tracker.start()                            # __init__)
            except Exception as e:  # (the tracker's own failure: wandb not logged in without a terminal to ask in)
                self.finish()
                raise ConfigError(_cannot_start(tracker_name, e, resumed_at is not None)) from e
            self.trackers.append(tracker)

    def log(self, step: int, loss: float, lr: float, per_concept: dict[str, float] | None = None) -> None:
        """loss.csv's row of `step` (the loss summed over concepts, and each concept's by its folder name) and the
        learning rate of the step just taken."""
        self._log(step, "loss", loss, per_concept, lr=lr)

    def log_validation(self, step: int, loss: float, per_concept: dict[str, float] | None = None) -> None:
        """validation.csv's row of `step`, as `log` gives loss.csv's."""
        self._log(step, "validation_loss", loss, per_concept)

    def _log(self, step: int, name: str, total: float, per_concept: dict[str, float] | None, **more: float) -> None:
        """`total` under `name`, `more` beside it, and each concept's value under `name`/its folder name."""
        values = {name: total, **more}
        values.update({f"{name}/{folder}": value for folder, value in (per_concept or {}).items()})
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_grid(self, step: int, tag: str, grid) -> None:
        """A sample grid (a PIL image) to the trackers that take images in a form known here: TensorBoard and wandb
        (each tracker's `log_images` takes its own form)."""
        import numpy as np

        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: np.asarray(grid.convert("RGB"))[None]}, step=step,
                                   dataformats="NHWC")  # (1, H, W, 3)
            elif tracker.name == "wandb":
                tracker.log_images({tag: [grid]}, step=step)

    def finish(self) -> None:
        """Close every tracker (TensorBoard writes what it holds). One that cannot close (wandb without its network)
        is warned about, not raised: the run's files are saved by then, and an error or Ctrl-C on its way out stays
        the one the user sees."""
        for tracker in self.trackers:
            try:
                tracker.finish()
            except Exception as e:  # (any tracker's own failure: theirs to name)
                warn(f"the {tracker.name} tracker could not be closed ({type(e).__name__}: {e}); its last "
                     f"values may be missing there (loss.csv and samples/ in --out have them)", stacklevel=2)
