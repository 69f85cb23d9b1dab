"""The errors textinv raises for input a user can fix.

Every message names the bad value and says what to do instead. The command line prints a `TextinvError` as one
clean line (no traceback) and exits with status 2; anything else is a bug and keeps its traceback.
"""


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
