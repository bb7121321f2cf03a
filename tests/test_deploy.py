"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service command must parse as a real `splitmq` subcommand with its
flags, and the image must contain every package folder the project installs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import typer
import yaml

from splitmq.cli import _register, app

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_broker_runs_the_projects_config():
    broker = COMPOSE["services"]["broker"]
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in broker["volumes"]
    conf = (ROOT / "mosquitto.conf").read_text()
    assert "persistence_location /mosquitto/data/" in conf and "listener 1883" in conf


@pytest.mark.parametrize("service", ["edge", "cloud", "device"])
def test_service_commands_parse(service):
    _register()
    command = typer.main.get_command(app)
    args = COMPOSE["services"][service]["command"]
    with command.context_class(command) as ctx:
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"no splitmq subcommand {args[0]!r}"
        sub.make_context(args[0], list(args[1:]), parent=ctx)  # raises on a bad flag


def test_the_image_holds_every_package_folder():
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    for folder in folders:
        assert f"COPY {folder} ./{folder}" in dockerfile, folder
