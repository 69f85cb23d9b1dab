"""The optimizers `textinv train --optimizer` offers for the new vectors, and kohya's names and arguments for them.

AdamW (Loshchilov & Hutter 2019) is the paper's and the diffusers script's, and the default. The others are the ones
kohya's sd-scripts configs most often name (its --optimizer_type), each the package kohya's scripts use: Lion
(Chen et al. 2023, `lion-pytorch`), Prodigy (Mishchenko & Defazio 2024, `prodigyopt`), Adafactor (Shazeer & Stern
2018, transformers'), SGD with Nesterov momentum (torch's, kohya's SGDNesterov), the schedule-free AdamW, SGD and
RAdam (Defazio et al. 2024, "The Road Less Scheduled", `schedulefree`) and D-Adaptation's Adam, AdaGrad, Adan, Lion
and SGD (Defazio & Mishchenko 2023, `dadaptation`; kohya's DAdaptation is its DAdaptAdamPreprint). kohya's 8-bit and
paged AdamW (bitsandbytes) save memory on billions of weights; the new vectors are a few thousand numbers, so they are
taken as the AdamW in fp32 that they approximate.

--optimizer-args holds kohya's optimizer_args, KEY=VALUE each, the value read as a Python literal as kohya reads it
("betas=0.9,0.99" is the tuple (0.9, 0.99)); a key the optimizer's constructor does not take is refused naming the
ones it does. Everything is checked by building the optimizer over a stand-in tensor before the model loads.

    >>> parse_optimizer_args(["betas=0.9,0.99", "d_coef=2", "relative_step=False"])
    {'betas': (0.9, 0.99), 'd_coef': 2, 'relative_step': False}

A schedule-free optimizer steps at a point y between its running average x and its SGD-like iterate z, and x is the
result: what is saved, sampled and scored (`evaluating`). It needs no rate schedule (the average takes its place) and
warms up by itself (`warmup_steps`, from --warmup-steps).

The training loop's step goes through here too: each concept's gradient clipped on its own rows (`_clip_rows`), an
fp16 overflow skipping only the concepts it hit (`_step_skipping_overflows`), and a resumed run's rate read from its
rebuilt schedule (`_rate_from_schedule`). Several concepts share one tensor per encoder; the clip and the skip keep
each concept's rows as its own run would have them, which holds only for an optimizer that steps each row on its
own: those that mix rows are refused with several concepts (`check_optimizer`).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect

import torch

from .errors import ConfigError, given, setting

SCHEDULE_FREE = ("adamw-schedulefree", "sgd-schedulefree", "radam-schedulefree")
# D-Adaptation's, each textinv's name for kohya's (DAdaptation, kohya's first, is the Adam of the paper's preprint)
DADAPT = {"dadapt-adam-preprint": ("dadaptation.experimental", "DAdaptAdamPreprint"),
          "dadapt-adagrad": ("dadaptation", "DAdaptAdaGrad"), "dadapt-adam": ("dadaptation", "DAdaptAdam"),
          "dadapt-adan": ("dadaptation", "DAdaptAdan"), "dadapt-adan-ip": ("dadaptation.experimental", "DAdaptAdanIP"),
          "dadapt-lion": ("dadaptation", "DAdaptLion"), "dadapt-sgd": ("dadaptation", "DAdaptSGD")}
OPTIMIZERS = ("adamw", "lion", "prodigy", "adafactor", "sgd", *SCHEDULE_FREE, *DADAPT)
# the optimizers that estimate their own step size, meant to run at --lr 1.0 (which scales the estimate)
OWN_STEP_SIZE = ("prodigy", *DADAPT)

# what --optimizer takes for each: kohya's names (its --optimizer_type, matched without case) and textinv's own
_MEMORY_SAVERS = ("adamw8bit", "pagedadamw8bit", "pagedadamw", "lion8bit", "pagedlion8bit")
SPELLINGS = {**{name: name for name in OPTIMIZERS}, "adamw8bit": "adamw", "pagedadamw8bit": "adamw",
             "pagedadamw": "adamw", "lion8bit": "lion", "pagedlion8bit": "lion", "sgdnesterov": "sgd",
             **{name.replace("-", ""): name for name in SCHEDULE_FREE},
             **{cls.lower(): name for name, (_, cls) in DADAPT.items()}, "dadaptation": "dadapt-adam-preprint"}


def memory_saver_note(name: str) -> str | None:
    """The one line said when --optimizer names one of bitsandbytes' 8-bit or paged optimizers (kohya's
    AdamW8bit, PagedAdamW8bit, PagedAdamW, Lion8bit, PagedLion8bit), which textinv takes as the fp32 one."""
    key = str(name).strip().lower()
    if key not in _MEMORY_SAVERS:
        return None
    ours = SPELLINGS[key]
    return (f"--optimizer {name}: taken as {ours}; 8-bit and paged optimizers save memory on billions of weights, "
            f"and the new vectors are a few thousand numbers, so {ours} in fp32 is what it would approximate")


# (module, class, the package that holds it where it may be missing)
_CLASSES = {
    "adamw": ("torch.optim", "AdamW", None),
    "lion": ("lion_pytorch", "Lion", "lion-pytorch"),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
    "adafactor": ("transformers.optimization", "Adafactor", None),
    "sgd": ("torch.optim", "SGD", None),
    "adamw-schedulefree": ("schedulefree", "AdamWScheduleFree", "schedulefree"),
    "sgd-schedulefree": ("schedulefree", "SGDScheduleFree", "schedulefree"),
    "radam-schedulefree": ("schedulefree", "RAdamScheduleFree", "schedulefree"),
    **{name: (module, cls, "dadaptation") for name, (module, cls) in DADAPT.items()},
}
# what textinv gives besides lr and weight_decay, unless --optimizer-args says otherwise: kohya's SGDNesterov (momentum
# 0.9 unless given); Adafactor at the rate of --lr and its schedule, as kohya's usual AdaFactor args set it
_DEFAULTS = {"sgd": {"momentum": 0.9, "nesterov": True},
             "adafactor": {"scale_parameter": False, "relative_step": False, "warmup_init": False}}
# given by textinv itself, from its own flags
_OWN = ("params", "lr", "weight_decay")
# optimizers whose step is not each row's own: Adafactor's factored second moment (a mean over rows and over columns),
# update clipping and relative scale, and Prodigy's one step size d for all weights, mix every row of the shared tensor
_ROWS_SHARED = {"adafactor": "Adafactor's second moment is factored over the rows and columns of the tensor all "
                             "concepts' vectors share (and its update clipped by that tensor's RMS)",
                "prodigy": "Prodigy estimates one step size from all the vectors at once",
                # (each row's own step otherwise, but a step one concept skips alone in fp16 still counts in the
                # tensor's step count, which weighs the average: the concept's rows would then be averaged as no
                # run of its own averages them)
                **{name: "the schedule-free average weighs each step by the step count of the tensor all concepts' "
                         "vectors share" for name in SCHEDULE_FREE},
                **{name: "D-Adaptation estimates one step size from all the vectors at once" for name in DADAPT}}


def optimizer_class(name: str):
    """The class of --optimizer `name`; a package that is missing is refused naming the pip command."""
    module, cls, package = _CLASSES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        raise ConfigError(f"{setting('optimizer', name)} needs the {package} package ({module}.{cls}, as kohya's "
                          f"scripts use): pip install {package}, or choose another {setting('optimizer')} (adamw needs "
                          f"nothing more)") from None


def parse_optimizer_args(items: list[str]) -> dict:
    """kohya's optimizer_args ("KEY=VALUE" each, the value a Python literal) as keyword arguments."""
    out = {}
    for item in items:
        key, sep, text = (part.strip() for part in str(item).partition("="))
        if not sep or not key.isidentifier():
            raise ConfigError(f"{given('optimizer_args', item)} is not KEY=VALUE, e.g. betas=0.9,0.99 or "
                              f"relative_step=False")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            # (kohya's read fails there too; true/false are meant as Python's, text may be written unquoted)
            lowered = text.lower()
            out[key] = {"true": True, "false": False, "none": None}.get(lowered, text)
        if key in out and isinstance(out[key], list):
            out[key] = tuple(out[key])  # ([0.9, 0.99] as a config file writes it: the betas tuple)
    return out


def canonical_optimizer_args(items: list[str]) -> list[str]:
    """--optimizer-args written one way, KEY=repr(value) in the order given, so that two spellings of the same
    arguments record (and resume) alike.

    >>> canonical_optimizer_args(["betas=0.9, 0.99", "relative_step=false"])
    ['betas=(0.9, 0.99)', 'relative_step=False']
    """
    return [f"{key}={value!r}" for key, value in parse_optimizer_args(items).items()]


def optimizer_arguments(name: str, items: list[str]) -> dict:
    """The keyword arguments --optimizer `name` is built with from --optimizer-args `items` (besides the rate and
    weight decay), each key checked against the constructor's own."""
    cls, (module, cls_name, _) = optimizer_class(name), _CLASSES[name]
    args = parse_optimizer_args(items)
    taken = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in args:
        if key in _OWN:
            fix = {"lr": f"give it as {setting('lr')} (for prodigy and the dadapt ones, {setting('lr', 1.0)} as "
                         f"kohya's configs do)",
                   "weight_decay": f"give it as {setting('weight_decay')}, textinv's setting for every optimizer",
                   "params": "textinv gives the new vectors"}[key]
            raise ConfigError(f"{setting('optimizer_args', f'{key}=...')}: {fix}")
        if key == "warmup_steps" and name in SCHEDULE_FREE:
            raise ConfigError(f"{setting('optimizer_args', 'warmup_steps=...')}: give it as {setting('warmup_steps')} "
                              f"(with {setting('lr_schedule', 'constant_with_warmup')}), which "
                              f"{setting('optimizer', name)} takes as its own warm-up")
        if key not in taken:
            own = ", ".join(p for p in taken if p not in _OWN and not p.startswith("_"))
            raise ConfigError(f"{setting('optimizer_args', f'{key}=...')}: {module}.{cls_name} "
                              f"({setting('optimizer', name)}) takes no {key}; its arguments are: {own}")
    if name == "adafactor" and (args.get("relative_step") or args.get("warmup_init")):
        raise ConfigError(f"{setting('optimizer_args', 'relative_step=True')} (or warmup_init=True): Adafactor would "
                          f"then set its own rate, and textinv's rate is {setting('lr')} with "
                          f"{setting('lr_schedule')}; leave them out (textinv gives relative_step=False, "
                          f"scale_parameter=False, warmup_init=False, kohya's usual AdaFactor args) and give the rate "
                          f"as {setting('lr')}")
    return {**_DEFAULTS.get(name, {}), **args}


def make_optimizer(name: str, params: list[torch.Tensor], lr: float, weight_decay: float,
                   items: list[str] = (), warmup_steps: int = 0) -> torch.optim.Optimizer:
    """--optimizer `name` over `params` at rate `lr`, with `weight_decay` (each optimizer's own kind: decoupled
    for AdamW, Lion, Prodigy, Adafactor and D-Adaptation's Lion and Adan, an L2 term for SGD, D-Adaptation's SGD
    and AdaGrad, and its Adam unless decouple=True) and --optimizer-args `items`. The default, adamw with no args,
    is `torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)`, as it always was. A
    schedule-free one warms up over `warmup_steps` itself, and is returned in training mode (kohya's scripts set it
    so before the first step; its step refuses to run otherwise).

    >>> make_optimizer("sgd", [torch.zeros(2, 4, requires_grad=True)], 0.1, 0.0).defaults["nesterov"]
    True
    """
    cls = optimizer_class(name)
    kwargs = optimizer_arguments(name, list(items))
    if warmup_steps:  # (refused before, for any other optimizer: `check_schedule`)
        kwargs["warmup_steps"] = warmup_steps
    try:
        optimizer = cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (TypeError, ValueError) as e:  # (a value the optimizer refuses: betas=2, momentum=0 with nesterov)
        raise ConfigError(f"{setting('optimizer', name)} with {setting('optimizer_args', ' '.join(items) or '(none)')}"
                          f": {cls.__name__} says: {e}") from None
    if name in SCHEDULE_FREE:
        optimizer.train()
    return optimizer


@contextlib.contextmanager
def evaluating(optimizer: torch.optim.Optimizer):
    """Inside, the parameters of a schedule-free `optimizer` hold its average x, the weights to save, sample and
    score (its `eval()`); after, exactly the point it steps from again. (Its `train()` would move them back by the
    inverse interpolation, off by a rounding each time: a run that saves would then differ from one that does not.)
    Any other optimizer's parameters are left as they are.

    >>> p = torch.zeros(3, requires_grad=True)
    >>> with evaluating(torch.optim.SGD([p], lr=0.1)):
    ...     p.tolist()
    [0.0, 0.0, 0.0]
    """
    if "train_mode" not in optimizer.param_groups[0]:  # (schedulefree's optimizers mark their mode there)
        yield
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    kept = [p.detach().clone() for p in params]
    try:  # (eval() inside: an interruption in the middle of it leaves the point it steps from too)
        optimizer.eval()
        yield
    finally:
        optimizer.train()
        with torch.no_grad():
            for p, y in zip(params, kept):
                p.copy_(y)


def check_schedule(name: str, lr_schedule: str, warmup_steps: int, lr_steps: str | None) -> None:
    """Refuse a rate schedule for a schedule-free optimizer, whose average takes the place of one (kohya's scripts
    give it none, whatever --lr_scheduler says): only its own warm-up, which RAdam's has no need of."""
    if name not in SCHEDULE_FREE:
        return
    if lr_steps is not None or lr_schedule not in ("constant", "constant_with_warmup"):
        scheduled = setting("lr_steps") if lr_steps is not None else setting("lr_schedule", lr_schedule)
        raise ConfigError(f"{setting('optimizer', name)} with {scheduled}: a schedule-free optimizer needs no rate "
                          f"schedule (its running average takes the place of one, and kohya's scripts give it none); "
                          f"leave {setting('lr_schedule', 'constant')}, or give constant_with_warmup with "
                          f"{setting('warmup_steps')} N for its own warm-up")
    if warmup_steps and name == "radam-schedulefree":
        raise ConfigError(f"{setting('optimizer', 'radam-schedulefree')} with {setting('warmup_steps')}: RAdam's "
                          f"rectification is its warm-up, and RAdamScheduleFree takes no warmup_steps; leave out "
                          f"{setting('warmup_steps')}, or use {setting('optimizer', 'adamw-schedulefree')}")


def check_optimizer(name: str, items: list[str], lr: float, weight_decay: float, concepts: int) -> None:
    """Refuse, before anything is loaded, an optimizer that is missing, arguments it does not take or refuses
    (it is built over a stand-in tensor), and one whose step mixes the rows of several concepts."""
    make_optimizer(name, [torch.zeros(2, 4, requires_grad=True)], lr, weight_decay, items)
    if concepts > 1 and name in _ROWS_SHARED:
        raise ConfigError(f"{setting('optimizer', name)} with several {setting('concepts')}: {_ROWS_SHARED[name]}, so "
                          f"a concept would not learn what its own run learns; train them with "
                          f"{setting('optimizer', 'adamw')}, lion or sgd (each row its own step), or each concept in a "
                          f"run of its own")


def _step_skipping_overflows(scaler, optimizer, exts, rows_per_concept: list[list[slice]],
                             skipped: list[int] | None = None) -> None:
    """The optimizer step under fp16 loss scaling (`scaler` enabled; else a plain step), skipped only for the
    concepts whose gradients overflowed. GradScaler skips the whole step when any gradient is not finite, and all
    concepts' vectors share one tensor per encoder, so one concept's overflow would cost every concept its step:
    here the others step as in their own runs, and an overflowed concept's vectors and Adam moments are put back.

    `skipped[k]` counts the steps concept k skipped alone (kept in checkpoints). Adam's step count, which its bias
    correction divides by (Kingma & Ba 2015, alg. 1: 1 - beta^t), is one per tensor and so shared; concept k's own
    run, whose skipped steps GradScaler skips whole, has taken `skipped[k]` steps fewer. Its rows are stepped at
    that count (`_adamw_rows`), so every later step is its own run's. The scale is lowered either way."""
    skipped = skipped if skipped is not None else [0] * len(rows_per_concept)
    finite = [True] * len(rows_per_concept)
    if scaler.is_enabled():  # one host sync for every concept (scaler.step syncs here anyway)
        finite = torch.stack([torch.stack([torch.isfinite(e.vectors.grad[r]).all() for e, r in zip(exts, rows)]).all()
                              for rows in rows_per_concept]).tolist()
    behind = [k for k, ok in enumerate(finite) if ok and skipped[k]]  # finite, and behind the shared count
    if not any(finite) or (all(finite) and not behind):
        scaler.step(optimizer)  # skips the step if fp16 gradients overflowed, then lowers the scale
        scaler.update()
        return
    kept, redo = [], []
    for k, rows in enumerate(rows_per_concept):
        for e, r in zip(exts, rows):
            if not finite[k]:  # vectors and moments put back after the step
                e.vectors.grad[r] = 0.0
                state = optimizer.state.get(e.vectors, {})
                # (None: no state yet, which the step makes: the rows' are zeroed, a moment or momentum not yet
                # begun, as at its own run's first step; SGD's buffer would hold the weight decay of the rows)
                kept.append((e.vectors, r, {name: v[r].clone() for name, v in state.items()
                                            if name != "step" and torch.is_tensor(v)} if state else None,
                             e.vectors.detach()[r].clone()))
            elif skipped[k] and isinstance(optimizer, torch.optim.AdamW):
                # stepped again below from these vectors, at its own step count (Lion's and SGD's steps do not
                # depend on the count; Adafactor and Prodigy are refused with several concepts)
                redo.append((e.vectors, r, skipped[k], e.vectors.detach()[r].clone()))
    optimizer.step()  # the finite concepts' step (gradients already unscaled)
    with torch.no_grad():
        for vectors, r, moments, old in kept:
            vectors[r] = old
            if moments is None:
                moments = {name: 0.0 for name, v in optimizer.state[vectors].items()
                           if name != "step" and torch.is_tensor(v) and v.shape == vectors.shape}
            for name, v in moments.items():
                optimizer.state[vectors][name][r] = v
        for vectors, r, behind_by, old in redo:
            vectors[r] = _adamw_rows(optimizer, vectors, r, old, behind_by)
    for k, ok in enumerate(finite):
        skipped[k] += not ok
    scaler.update()  # lowers the scale when the unscale found an overflow


def _adamw_rows(optimizer, vectors: torch.Tensor, r: slice, old: torch.Tensor, behind_by: int) -> torch.Tensor:
    """Rows `r` of `vectors` after the AdamW step just taken, from their vectors before it (`old`), had the step
    count been `behind_by` lower: torch's AdamW update (decoupled weight decay, then the bias-corrected moments,
    which the step has already updated), in its operations' order, so the rows are those of a run of their own."""
    group = next(g for g in optimizer.param_groups if any(p is vectors for p in g["params"]))
    state = optimizer.state[vectors]
    t = float(state["step"]) - behind_by
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    new = old * (1 - lr * group["weight_decay"])
    # (amsgrad, from --optimizer-args: the running maximum of the second moment, which the step has updated)
    second = state["max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"][r]
    denom = (second.sqrt() / (1 - beta2 ** t) ** 0.5).add_(eps)
    return new.addcdiv_(state["exp_avg"][r], denom, value=-lr / (1 - beta1 ** t))


def _rate_from_schedule(optimizer, lr_schedule) -> None:
    """Set the optimizer's rate to what the schedule gives at its step. A checkpoint holds the rate its own schedule
    set for the next step; a resume with a raised --steps rebuilds a decaying schedule over the longer run, whose
    rate at that step differs (at the end of a linear schedule the saved one is 0). Unchanged settings give the
    saved rate bit for bit (the same expression as LambdaLR's)."""
    if not hasattr(lr_schedule, "lr_lambdas"):  # (every schedule here is a LambdaLR)
        return
    rates = [base * rate(lr_schedule.last_epoch) for base, rate in zip(lr_schedule.base_lrs, lr_schedule.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr
    lr_schedule._last_lr = rates


def _clip_rows(grads_and_rows: list[tuple[torch.Tensor, slice]], max_norm: float) -> None:
    """Clip the gradient of some rows (across encoders) to a total L2 norm of `max_norm`, in place."""
    norm = torch.sqrt(sum((g[r].float() ** 2).sum() for g, r in grads_and_rows))
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g, r in grads_and_rows:
        g[r] *= factor
