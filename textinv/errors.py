"""The errors textinv raises for input a user can fix, and where its warnings point (`warn`).

Every message names the bad value and says what to do instead. The command line prints a `TextinvError` as one
clean line (no traceback) and exits with status 2; anything else is a bug and keeps its traceback.
"""

import contextlib
import contextvars
import os
import sys
import warnings


class TextinvError(Exception):
    """Base class: bad input or state that the user can fix."""


class ConfigError(TextinvError, ValueError):
    """A setting is out of range or contradicts another setting."""


class DataError(TextinvError):
    """The training images or captions cannot be used (missing folder, no images, corrupt file...)."""


class ModelError(TextinvError):
    """The model cannot be loaded, or is of a family textinv does not support."""


class UnknownSettingError(ConfigError, TypeError):
    """A config class was given a keyword it has no setting of (`TrainConfig(stpes=3)`): a TypeError, as Python's
    own for an unexpected keyword, that names the setting meant."""


class TokenError(TextinvError, ValueError):
    """A placeholder or init token cannot be used with this tokenizer."""


class FormatError(TextinvError):
    """An embedding file is not what it claims to be, or cannot be written in the asked format."""


class TrainingError(TextinvError):
    """Training cannot go on (for example the loss became non-finite)."""


class DeviceMemoryError(TextinvError):
    """The GPU ran out of memory: the message says where, how much the device has, the settings that need less
    there and, for a training run, the step it is saved at (`textinv.memory`)."""


# whether the command line runs this (`cli.main` sets it): a refusal then names a setting by its flag, and from Python
# by its keyword, as each user wrote it (`setting`, `given`: the checks ask them, so that each check reads the same
# from both; only wording the two forms cannot share reads this itself: a shell-quoted path to paste, run_folder's
# `_new_run_from`, the variant and --to notes of run_folder and formats, and train_memory's resume, settings given
# together and switch turned off)
ON_COMMAND_LINE = contextvars.ContextVar("textinv_on_command_line", default=False)


_LEFT_OUT = object()  # (`setting` called without a value)
SHORT_FLAGS = {"n": "-n"}  # the settings whose refusals name their short flag (their `short` in `config.opt`)


def setting(name: str, value=_LEFT_OUT, spec: str = "") -> str:
    """Setting `name` as its user writes it, for a refusal that speaks of it: its flag on the command line
    (`--steps must be ...`), its keyword from Python (`steps= must be ...`). With `value`, as that value is given to
    it, for a value to give or one given beside the refused one: as typed on the command line (`--lr-schedule cosine`,
    formatted by `spec`; True and False a switch's flags, `--no-center-crop`; a list its words), as Python writes it
    from Python (`lr_schedule='cosine'`, `center_crop=False`). `given` is for the refused value itself, quoted on both.

    >>> setting("steps"), setting("lr_schedule", "cosine"), setting("center_crop", False)
    ('steps=', "lr_schedule='cosine'", 'center_crop=False')
    """
    if isinstance(value, os.PathLike):  # (a Path from Python: shown as its text)
        value = os.fspath(value)
    if ON_COMMAND_LINE.get():
        flag = SHORT_FLAGS.get(name) or "--" + name.replace("_", "-")
        if isinstance(value, bool):  # (a switch: --center-crop, --no-center-crop)
            return flag if value else "--no-" + flag[2:]
        if isinstance(value, list):  # (a list: the flag's words, each quoted for the shell)
            value = " ".join(map(repr, value))
        return flag if value is _LEFT_OUT else f"{flag} {value:{spec}}"
    return f"{name}=" if value is _LEFT_OUT else f"{name}={value!r}"


def given(name: str, value) -> str:
    """Setting `name` given `value`, as its user wrote it, for a refusal: its keyword from Python
    (`sampler='eulr'`), its flag on the command line (`--sampler 'eulr'`; a --config file's keys are its flags').

    >>> given("lr_schedule", "cosin")
    "lr_schedule='cosin'"
    """
    return setting(name, repr(value) if ON_COMMAND_LINE.get() else value)


LONGEST_LIST = 16  # (a refusal lists at most this many choices: --sampler's 122 are left to where they are listed)


def not_one_of(choices, listed: tuple[str, str, str] | None = None) -> str:
    """What a refusal says of the choices a value is not among: all of them where they are few, as the command
    line's argparse error lists them, else their count, the first few and, with `listed` (what they are, where the
    command line lists every one, where Python does: `samplers.SAMPLERS_LISTED`), where to find them all, as the
    command line's error leaves them to --help.

    >>> not_one_of(["l2", "l1"]), not_one_of(range(20))
    ('is not one of: l2, l1', 'is not one of the 20 choices (0, 1, 2, 3, 4, 5, ...)')
    """
    names = [str(choice) for choice in choices]
    if len(names) <= LONGEST_LIST:
        return f"is not one of: {', '.join(names)}"
    what, where = (listed[0], f"; {listed[1] if ON_COMMAND_LINE.get() else listed[2]} lists every one") if listed \
        else ("choices", "")
    return f"is not one of the {len(names)} {what} ({first_few(names, 6)}{where})"


def first_few(names, most: int = 3) -> str:
    """The first `most` of `names`, comma-separated, and ", ..." where there are more: how a message names what it
    found without listing hundreds.

    >>> first_few(["a.txt", "b.txt", "c.txt", "d.txt"])
    'a.txt, b.txt, c.txt, ...'
    """
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


class TextinvWarning(UserWarning):
    """Base of every warning textinv raises (a picture skipped, a word the model does not know, ...):
    `warnings.filterwarnings("ignore", category=TextinvWarning)` silences them all, where a `module="textinv"` filter
    cannot, as they name the caller's line (`warn`). Each kind has its own subclass where one is worth filtering
    alone (`data.SmallImageWarning`, `formats.ModelSpecWarning`, ...)."""


def backslash_note(path) -> str:
    """What a "does not exist" error adds for a path written with backslashes where folders are separated by '/': a
    path copied from Windows (C:\\Users\\me\\pics) names no folder here, and the plain error would not say why.

    >>> backslash_note(r"C:\\Users\\me\\pics")  # doctest: +ELLIPSIS
    " (it is written with backslashes, as on Windows; ... e.g. '/mnt/c/Users/me/pics' under WSL)"
    """
    text = str(path)
    if os.sep != "/" or "\\" not in text:
        return ""
    forward = text.replace("\\", "/")
    if len(forward) > 2 and forward[1] == ":" and forward[0].isalpha():  # a drive: WSL mounts it at /mnt/<letter>
        example = f"{'/mnt/' + forward[0].lower() + forward[2:]!r} under WSL"
    else:
        example = repr(forward)
    return f" (it is written with backslashes, as on Windows; here folders are separated by '/', e.g. {example})"


_ENTRY_POINTS = set()  # the code of the functions whose caller a warning raised inside them names (`warn`)
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # (textinv's own files, shapes/ among them)


def warns_at_caller(function):
    """`function` (`train.train`, `generate.generate`, `merge.merge`, `xyz.plot`, `score.score`) made one whose
    caller the warnings raised inside it name (`warn`)."""
    _ENTRY_POINTS.add(function.__code__)
    return function


# the warnings said so far where they are said once (`said_once`); None: each time
_SAID: contextvars.ContextVar[set | None] = contextvars.ContextVar("said", default=None)


@contextlib.contextmanager
def said_once():
    """Within it, `warn` says each message once: an X/Y/Z plot runs `generate` for each cell, whose notices of the
    run (embeddings trained at different sizes, say) would be said again for every cell; Python's own once-a-line
    filter forgets what it said whenever the filters change, which a cell's checks do. Nested, the outer one's
    record holds.

    >>> with said_once():  # doctest: +SKIP
    ...     warn("a note"); warn("a note")  # said once
    """
    token = _SAID.set(set() if _SAID.get() is None else _SAID.get())
    try:
        yield
    finally:
        _SAID.reset(token)


def warn(message, category=None, stacklevel: int = 1) -> None:
    """`warnings.warn` (of `category`, by default `TextinvWarning`), named at the user's line inside a `warns_at_caller` function: a warning raised anywhere in a
    `train(...)` (its phases, the picture and kohya readers it calls) or a `generate(...)` names the line that called
    it, where a fixed `stacklevel` names a line inside textinv at one depth or another. Where one such function runs
    another, the innermost one the user's own code called is named: `generate` with an X/Y/Z plot runs `plot`,
    which runs `generate` for each cell, all called from inside textinv but the first (its caller is named); a
    `generate` in the `on_step` callback a `train` calls is called by the user's callback (the callback's line is
    named, not the `train(...)`). Called from textinv's own command line, the outermost's caller. Elsewhere
    (`find_images` called directly) it is `stacklevel` as `warnings.warn` counts it from the caller. (Python 3.12's
    `skip_file_prefixes` does the like.)

    >>> warn("a note", stacklevel=2)  # doctest: +SKIP
    """
    category = category or TextinvWarning
    said = _SAID.get()
    if said is not None:
        if (str(message), category) in said:
            return
        said.add((str(message), category))
    frame, level, found = sys._getframe(1), 1, None  # (the caller's frame is stacklevel 1 to it)
    while frame is not None:
        if frame.f_code in _ENTRY_POINTS:
            found = level
            caller = frame.f_back
            if caller is not None and not os.path.abspath(caller.f_code.co_filename).startswith(_PACKAGE):
                break  # (the user's code called it: the innermost such call is the one to name)
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=(found + 1 if found is not None else stacklevel) + 1)
