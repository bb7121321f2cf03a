"""The ``splitmq`` command line: one Typer app, subcommands grouped by module.

User mistakes (bad path, not ONNX, unknown cut, bad flag value) print one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console

from splitmq.shared.errors import SplitMQError
from splitmq.shared.settings import Settings

app = typer.Typer(
    name="splitmq",
    help="Split DNN inference between IoT devices, edge servers and the cloud over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

PoolOption = Annotated[
    str | None,
    typer.Option("--pool", help="Model pool directory [env: SPLITMQ_POOL].", show_default=False),
]


def settings(**overrides: object) -> Settings:
    """Settings from env/.env, with the flags the user gave on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1]) from exc


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Importing registers each module's commands on `app`.
    from splitmq import commands_calibrate, commands_models, commands_runtime  # noqa: F401


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `kill`/`docker stop` unwind like Ctrl-C: brokers, workers stop


def main() -> None:
    _register()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except SplitMQError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
