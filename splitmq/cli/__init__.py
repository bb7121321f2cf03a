"""The ``splitmq`` command line: one Typer app, subcommands grouped by module.

``root`` holds the app and its shared options, ``options`` the option groups several
commands share; each command module imports
``root`` (and ``output``) and registers its commands on the app; ``build``
imports the command modules, in the order ``splitmq --help`` lists them.
Nothing imports this package but ``splitmq.__main__`` and the console script.

No traceback reaches a user: a ``SplitMQError`` (a mistake the user can fix:
bad path, not ONNX, unknown cut, bad flag value) prints one line and exits
with status 2; anything else is a bug and prints one line naming the
exception and exits with status 1, with the traceback under ``-v``. Usage
errors keep click's message and status 2; Ctrl-C and SIGTERM exit with 130.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys

import typer
from rich.markup import escape

from splitmq.cli.output import err
from splitmq.cli.root import app, verbosity
from splitmq.shared.errors import SplitMQError

__all__ = ["app", "build", "main"]

log = logging.getLogger("splitmq")

#: Command modules, in the order `splitmq --help` lists their commands.
COMMAND_MODULES = (
    "models",
    "pool",
    "calibrate",
    "exits",
    "family",
    "plan",
    "serve",
    "device",
    "demo",
    "secure",
    "results",
    "dashboard",
    "health",
)
MAX_MESSAGE = 300  # characters of an unexpected error's message on its one line


def build() -> typer.Typer:
    """The app with every command registered (importing a command module registers it)."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    return app


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `kill`/`docker stop` unwind like Ctrl-C: brokers, workers stop


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def _verbose() -> bool:
    """Whether the user gave ``-v``, even when the failure came before click parsed it."""
    if verbosity() > 0:
        return True
    for arg in sys.argv[1:]:  # the root's options come before the command's name
        if not arg.startswith("-"):
            return False
        if arg == "--verbose" or (arg[1:] and set(arg[1:]) == {"v"}):
            return True
    return False


def _unexpected(exc: Exception) -> None:
    """One line naming the exception; the traceback too under ``-v``."""
    verbose = _verbose()
    if verbose:
        log.error("unexpected error; traceback:", exc_info=exc)
    message = _one_line(str(exc))
    line = f"unexpected {type(exc).__name__}" + (f": {message}" if message else "")
    hint = "" if verbose else " (run with -v to see the traceback)"
    err.print(f"[bold red]error:[/] {escape(line)}{hint}", highlight=False, soft_wrap=True)


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        build()  # inside: a command module that fails to import is a bug reported like any other
        app()  # standalone mode: click prints usage errors itself and exits with status 2
    except SplitMQError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        _unexpected(exc)
        sys.exit(1)
