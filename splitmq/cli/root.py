"""The root of the ``splitmq`` command line: the Typer app, its shared options, settings.

Options several commands take as a block, parsed into one value, are groups in
``options``.

Command modules import ``app`` from here and register on it; nothing here
imports a command module, so the CLI has no import cycle.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from splitmq.shared.errors import UserError
from splitmq.shared.settings import Settings

if TYPE_CHECKING:
    from splitmq.shared.model.pool import ModelVersion

app = typer.Typer(
    name="splitmq",
    help="Split DNN inference between IoT devices, edge servers and the cloud over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PoolOption = Annotated[
    str | None,
    typer.Option("--pool", help="Model pool directory \\[env: SPLITMQ_POOL].", show_default=False),
]
BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        help="MQTT broker: mqtt://host:port, mqtts://user@host:8883 or host:port "
        "\\[env: SPLITMQ_BROKER]; log in with SPLITMQ_USERNAME, SPLITMQ_PASSWORD or "
        "SPLITMQ_PASSWORD_FILE, and SPLITMQ_CA_FILE for TLS.",
        show_default=False,
    ),
]
PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--topic-prefix", help="Topic prefix \\[env: SPLITMQ_TOPIC_PREFIX].", show_default=False
    ),
]
IdOption = Annotated[str | None, typer.Option("--id", help="Client id (default: random).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")]
ModelArg = Annotated[str, typer.Argument(help="Pool name (NAME or NAME@VERSION) or FILE.onnx.")]

_verbosity = 0  # how many -v the user gave; read by the error handler in splitmq.cli


def verbosity() -> int:
    """How many ``-v`` the root command got (0 before it has parsed its options)."""
    return _verbosity


def settings(**overrides: object) -> Settings:
    """Settings from env/.env, with the flags the user gave on top."""
    try:
        return Settings.given(**overrides)
    except UserError as exc:  # a usage error, as click reports a bad flag
        raise typer.BadParameter(str(exc)) from None


def open_ref(ref: str, pool: str | None) -> tuple[Settings, ModelVersion]:
    """Settings and the model ``ref`` names: a pool NAME[@VERSION] or an .onnx file."""
    from splitmq.shared.model.pool import ModelPool, open_model

    cfg = settings(pool=pool)
    with Console(stderr=True).status(f"loading {ref} …"):
        return cfg, open_model(ModelPool(cfg.pool), ref)


def package_version() -> str:
    """The installed distribution's version (what pip and the image report)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splitmq")
    except PackageNotFoundError:  # imported from a tree that was never installed
        from splitmq import __version__

        return __version__


def _show_version(given: bool) -> None:
    if given:
        typer.echo(f"splitmq {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    global _verbosity
    _verbosity = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
