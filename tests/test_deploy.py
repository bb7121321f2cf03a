"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service command must parse as a real `splitmq` subcommand with its
flags. The image builds splitmq's wheel in a first stage from everything the
wheel is built from (the same inputs tests/test_wheel.py builds and installs
its wheel from), and its final stage installs that wheel, never the source
tree. The broker service runs `splitmq broker --secure` (the mosquitto.conf that
ships in the package, plus users, ACL and TLS); every other service logs in over TLS.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml
from test_wheel import wheel_inputs

from splitmq.broker.launcher import DEFAULT_CONFIG
from splitmq.cli import build

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> list[list[list[str]]]:
    """The Dockerfile as stages (split at FROM) of instructions, each a list of words."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)  # join continuation lines
    found: list[list[list[str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line, posix=False)
        if words[0].upper() == "FROM":
            found.append([])
        assert found, f"instruction before the first FROM: {line}"
        found[-1].append(words)
    return found


def instructions(stage: list[list[str]], name: str) -> list[list[str]]:
    return [words[1:] for words in stage if words[0].upper() == name]


def copy_sources(stage: list[list[str]]) -> set[str]:
    """What COPY takes from the build context (not from another stage) in ``stage``."""
    sources = set()
    for args in instructions(stage, "COPY"):
        if not any(a.startswith("--from=") for a in args):
            sources |= {a.rstrip("/") for a in args[:-1] if not a.startswith("--")}
    return sources


def commands(stage: list[list[str]]) -> list[list[str]]:
    """The shell commands of the RUN instructions of ``stage``, as words without quotes."""
    found = []
    for args in instructions(stage, "RUN"):
        for command in " ".join(args).split("&&"):
            words = [w.strip("'\"") for w in command.split()]
            if words[:2] == ["python", "-m"]:
                words = words[2:]
            found.append(words)
    return found


def test_the_packaged_config_is_the_one_config() -> None:
    top = ROOT / "mosquitto.conf"
    # One definition: the top-level file is a link to the one shipped as package data.
    assert top.is_symlink() and top.resolve() == (ROOT / "broker" / "mosquitto.conf").resolve()
    assert top.read_text() == DEFAULT_CONFIG.read_text()


def test_compose_runs_secure() -> None:
    """The broker is splitmq's launcher with --secure and publishes only TLS; every other
    role logs in over mqtts with its own user's settings file and pins the CA."""
    services = COMPOSE["services"]
    broker = services["broker"]
    assert broker["command"][:3] == ["broker", "--secure", "/secure"]
    command = broker["command"]  # TLS where the other containers reach it
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert broker["ports"] == ["8883:8883"]
    for name, service in services.items():
        if name in ("broker", "site-broker"):  # the brokers (test_compose: the site's)
            continue
        env = service["environment"]
        assert env["SPLITMQ_BROKER"] == "mqtts://broker:8883", name
        assert env["SPLITMQ_CA_FILE"] == "/secure/ca.crt", name
        user = Path(service["env_file"]).stem
        assert service["env_file"] == f"./secure/clients/{user}.env", name
        if service["command"][0] == "device":  # its id is its user: what the ACL enforces
            args = service["command"]
            assert args[args.index("--id") + 1] == user == name
        else:  # the dashboard and the recorder only read, as the monitor user
            readers = {"dashboard": "monitor", "recorder": "monitor"}
            assert user == readers.get(name, service["command"][0]), name


@pytest.mark.parametrize("service", sorted(COMPOSE["services"]))
def test_service_commands_parse(service):
    command = typer.main.get_command(build())  # the app with every command registered
    args = COMPOSE["services"][service]["command"]
    with command.context_class(command) as ctx:
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"no splitmq subcommand {args[0]!r}"
        sub.make_context(args[0], list(args[1:]), parent=ctx)  # raises on a bad flag


def test_the_first_stage_builds_the_wheel_from_all_it_needs() -> None:
    build = stages()[0]
    assert set(wheel_inputs()) <= copy_sources(build)
    assert any(args[:2] == ["pip", "wheel"] and "--no-deps" in args for args in commands(build))


def test_the_image_installs_the_wheel_and_no_source_tree() -> None:
    every = stages()
    assert len(every) >= 2, "build the wheel in a stage of its own"
    build, final = every[0], every[-1]
    assert [w.upper() for w in build[0][-2:-1]] == ["AS"], "name the wheel stage"
    name = build[0][-1]
    (wheel,) = [args for args in commands(build) if args[:2] == ["pip", "wheel"]]
    wheel_dir = wheel[wheel.index("--wheel-dir") + 1]
    copied = [args for args in instructions(final, "COPY") if f"--from={name}" in args]
    assert any(wheel_dir in args for args in copied), f"COPY --from={name} {wheel_dir} …"
    assert copy_sources(final) == set(), "the final stage takes nothing from the source tree"
    installs = [args[2:] for args in commands(final) if args[:2] == ["pip", "install"]]
    assert any(".whl" in " ".join(args) for args in installs), installs
    for stage in every:
        for args in commands(stage):
            if args[:2] == ["pip", "install"]:
                local = [a for a in args if a in (".", "-e", "--editable") or a.startswith(".[")]
                assert not local, f"installs the source tree, not the wheel: {args}"
    assert instructions(final, "ENTRYPOINT") == [['["splitmq"]']]
