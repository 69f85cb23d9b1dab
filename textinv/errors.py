"""The errors textinv raises for input a user can fix.

Every message names the bad value and says what to do instead. The command line prints a `TextinvError` as one
clean line (no traceback) and exits with status 2; anything else is a bug and keeps its traceback.
"""

import os


class TextinvError(Exception):
    """Base class: bad input or state that the user can fix."""


class ConfigError(TextinvError, ValueError):
    """A setting is out of range or contradicts another setting."""


class DataError(TextinvError):
    """The training images or captions cannot be used (missing folder, no images, corrupt file...)."""


class ModelError(TextinvError):
    """The model cannot be loaded, or is of a family textinv does not support."""


class TokenError(TextinvError, ValueError):
    """A placeholder or init token cannot be used with this tokenizer."""


class FormatError(TextinvError):
    """An embedding file is not what it claims to be, or cannot be written in the asked format."""


class TrainingError(TextinvError):
    """Training cannot go on (for example the loss became non-finite)."""


class DeviceMemoryError(TextinvError):
    """The GPU ran out of memory: the message says where, how much the device has, the settings that need less
    there and, for a training run, the step it is saved at (`textinv.memory`)."""


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
