"""The optimizers `textinv train --optimizer` offers for the new vectors, and kohya's names and arguments for them.

AdamW (Loshchilov & Hutter 2019) is the paper's and the diffusers script's, and the default. The others are the ones
kohya's sd-scripts configs most often name (its --optimizer_type), each the package kohya's scripts use: Lion
(Chen et al. 2023, `lion-pytorch`), Prodigy (Mishchenko & Defazio 2024, `prodigyopt`), Adafactor (Shazeer & Stern
2018, transformers') and SGD with Nesterov momentum (torch's, kohya's SGDNesterov). kohya's 8-bit and paged AdamW
(bitsandbytes) save memory on billions of weights; the new vectors are a few thousand numbers, so they are taken as
the AdamW in fp32 that they approximate.

--optimizer-args holds kohya's optimizer_args, KEY=VALUE each, the value read as a Python literal as kohya reads it
("betas=0.9,0.99" is the tuple (0.9, 0.99)); a key the optimizer's constructor does not take is refused naming the
ones it does. Everything is checked by building the optimizer over a stand-in tensor before the model loads.

    >>> parse_optimizer_args(["betas=0.9,0.99", "d_coef=2", "relative_step=False"])
    {'betas': (0.9, 0.99), 'd_coef': 2, 'relative_step': False}
"""

from __future__ import annotations

import ast
import importlib
import inspect

import torch

from .errors import ConfigError

OPTIMIZERS = ("adamw", "lion", "prodigy", "adafactor", "sgd")

# what --optimizer takes for each: kohya's names (its --optimizer_type, matched without case) and textinv's own
_MEMORY_SAVERS = ("adamw8bit", "pagedadamw8bit", "pagedadamw", "lion8bit", "pagedlion8bit")
SPELLINGS = {**{name: name for name in OPTIMIZERS}, "adamw8bit": "adamw", "pagedadamw8bit": "adamw",
             "pagedadamw": "adamw", "lion8bit": "lion", "pagedlion8bit": "lion", "sgdnesterov": "sgd"}


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
                "prodigy": "Prodigy estimates one step size from all the vectors at once"}


def optimizer_class(name: str):
    """The class of --optimizer `name`; a package that is missing is refused naming the pip command."""
    module, cls, package = _CLASSES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        raise ConfigError(f"--optimizer {name} needs the {package} package ({module}.{cls}, as kohya's scripts use): "
                          f"pip install {package}, or choose another --optimizer (adamw needs nothing more)") from None


def parse_optimizer_args(items: list[str]) -> dict:
    """kohya's optimizer_args ("KEY=VALUE" each, the value a Python literal) as keyword arguments."""
    out = {}
    for item in items:
        key, sep, text = (part.strip() for part in str(item).partition("="))
        if not sep or not key.isidentifier():
            raise ConfigError(f"--optimizer-args {item!r} is not KEY=VALUE, e.g. betas=0.9,0.99 or "
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
    given = parse_optimizer_args(items)
    taken = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in given:
        if key in _OWN:
            fix = {"lr": "give it as --lr (for prodigy, --lr 1.0 as kohya's configs do)",
                   "weight_decay": "give it as --weight-decay, textinv's setting for every optimizer",
                   "params": "textinv gives the new vectors"}[key]
            raise ConfigError(f"--optimizer-args {key}=...: {fix}")
        if key not in taken:
            own = ", ".join(p for p in taken if p not in _OWN and not p.startswith("_"))
            raise ConfigError(f"--optimizer-args {key}=...: {module}.{cls_name} (--optimizer {name}) "
                              f"takes no {key}; its arguments are: {own}")
    if name == "adafactor" and (given.get("relative_step") or given.get("warmup_init")):
        raise ConfigError("--optimizer-args relative_step=True (or warmup_init=True): Adafactor would then set its "
                          "own rate, and textinv's rate is --lr with --lr-schedule; leave them out (textinv gives "
                          "relative_step=False, scale_parameter=False, warmup_init=False, kohya's usual AdaFactor "
                          "args) and give the rate as --lr")
    return {**_DEFAULTS.get(name, {}), **given}


def make_optimizer(name: str, params: list[torch.Tensor], lr: float, weight_decay: float,
                   items: list[str] = ()) -> torch.optim.Optimizer:
    """--optimizer `name` over `params` at rate `lr`, with `weight_decay` (each optimizer's own kind: decoupled
    for AdamW, Lion, Prodigy and Adafactor, an L2 term for SGD) and --optimizer-args `items`. The default, adamw
    with no args, is `torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)`, as it always was.

    >>> make_optimizer("sgd", [torch.zeros(2, 4, requires_grad=True)], 0.1, 0.0).defaults["nesterov"]
    True
    """
    cls = optimizer_class(name)
    kwargs = optimizer_arguments(name, list(items))
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (TypeError, ValueError) as e:  # (a value the optimizer refuses: betas=2, momentum=0 with nesterov)
        raise ConfigError(f"--optimizer {name} with --optimizer-args {' '.join(items) or '(none)'}: "
                          f"{cls.__name__} says: {e}") from None


def check_optimizer(name: str, items: list[str], lr: float, weight_decay: float, concepts: int) -> None:
    """Refuse, before anything is loaded, an optimizer that is missing, arguments it does not take or refuses
    (it is built over a stand-in tensor), and one whose step mixes the rows of several concepts."""
    make_optimizer(name, [torch.zeros(2, 4, requires_grad=True)], lr, weight_decay, items)
    if concepts > 1 and name in _ROWS_SHARED:
        raise ConfigError(f"--optimizer {name} with several --concepts: {_ROWS_SHARED[name]}, so a concept would "
                          f"not learn what its own run learns; train them with --optimizer adamw, lion or sgd (each "
                          f"row its own step), or each concept in a run of its own")
