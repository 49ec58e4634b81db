"""Bad input ends a command with one line on stderr naming the file/field and what was expected, and exit status 1.

``InputError`` marks such errors; the parsers' and readers' own ``ValueError`` / ``OSError`` subclasses (e.g.
``image_checks.InputDataError``, ``CO3DDataError``, ``FileNotFoundError``, a full disk) count as input errors too.
Anything else is a bug and keeps its traceback. ``ITERGEN_DEBUG=1`` (or ``itergen --debug``) shows the traceback
of input errors as well.

``itergen`` reports through :func:`report`; ``ns-train`` / ``ns-eval`` / ... through the ``sys.excepthook`` that
importing the plugin's method configs installs (:func:`install_excepthook`).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Optional, TextIO, Union

DEBUG_ENV = "ITERGEN_DEBUG"
EXIT_INPUT_ERROR = 1


class InputError(ValueError):
    """A file, folder or option given to a command is not what it must be; the message is one line naming it."""


def debugging() -> bool:
    """True when tracebacks of input errors are wanted (``ITERGEN_DEBUG`` set to anything but 0/false/no)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


_FOREIGN_INPUT_ERRORS = {
    ("safetensors._safetensors_rust", "SafetensorError"),  # truncated or garbled .safetensors
    ("_pickle", "UnpicklingError"),  # garbled torch checkpoint
    ("zlib", "error"),  # garbled gzip/npz content
    ("zipfile", "BadZipFile"),
}


def is_input_error(err: BaseException) -> bool:
    """Whether ``err`` reports bad input (one line) rather than a bug (traceback)."""
    if isinstance(err, (ValueError, OSError, EOFError)):  # InputError, JSONDecodeError, FileNotFoundError, ENOSPC ...
        return True
    return (type(err).__module__, type(err).__name__) in _FOREIGN_INPUT_ERRORS


def one_line(err: BaseException) -> str:
    """``Type: message`` of ``err`` on one line (a multi-line message is joined with spaces)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def report(err: BaseException, stream: Optional[TextIO] = None) -> bool:
    """Print the one-line message of an input error to ``stream`` (stderr); False (nothing printed) otherwise or
    when debugging, so the caller re-raises and Python prints the traceback."""
    if debugging() or not is_input_error(err):
        return False
    print(one_line(err), file=stream or sys.stderr, flush=True)
    return True


def write_failed(path: Union[str, Path], err: OSError) -> OSError:
    """The OSError to raise when writing ``path`` failed: same errno, message naming the file (and, for a full disk
    or quota, what to do)."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason += "; free space (or choose another output directory) and rerun"
    new = OSError(err.errno, f"{path}: cannot write ({reason})")
    return new


def excepthook(exc_type, exc, tb) -> None:
    """The plugin's sys.excepthook for ns-* commands: one line for input errors, else the previous hook."""
    if exc is not None and report(exc):
        return
    _previous_hook(exc_type, exc, tb)


_previous_hook = sys.excepthook


def install_excepthook() -> None:
    """Make uncaught input errors of this process one line (idempotent; leaves a hook someone else set alone)."""
    global _previous_hook
    if sys.excepthook is excepthook or sys.excepthook is not sys.__excepthook__:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = excepthook
