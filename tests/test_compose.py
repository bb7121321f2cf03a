"""docker-compose.yml as Docker reads it: `docker compose config` (or Debian's
docker-compose) run for real, no engine needed (`make compose` installs it).

Start-up must not race: every service restarts by policy and has a healthcheck
that runs a command the image has, and every role waits for what it needs to be
healthy. Metrics stay on the container's loopback unless compose publishes them.
The opt-in profile `site` adds a site's broker bridged to the cloud broker; it is
checked with everything else, with the profile on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from splitmq.cli import build

ROOT = Path(__file__).parent.parent
RAW = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
#: What the Dockerfile's apt-get installs each non-splitmq healthcheck command with.
PACKAGE_OF = {"mosquitto_sub": "mosquitto-clients", "mosquitto_pub": "mosquitto-clients"}
#: The brokers: they need nobody, and publish their TLS port (the site's beside the cloud's).
BROKERS = {"broker": "8883", "site-broker": "8884"}
#: What a site host sets for the site's broker (docs/operations.md, sites).
SITE_ENV = {"SPLITMQ_SITE": "north", "SPLITMQ_BRIDGE": "mqtts://cloud.example.org:8883"}


def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    if docker and plugin and plugin.returncode == 0:
        return [docker, "compose"]
    if found := shutil.which("docker-compose"):
        return [found]
    pytest.fail("no docker compose: run `make compose` (apt-get install docker-compose)")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every service as `config` resolves it (anchors merged, defaults filled in, the
    `site` profile on, a site host's settings given), run where the file lives beside
    the env files `splitmq secure init` writes (empty here)."""
    root = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yml", root)
    for service in RAW["services"].values():
        if "env_file" in service:
            env = root / service["env_file"]
            env.parent.mkdir(parents=True, exist_ok=True)
            env.touch()
    done = subprocess.run(
        [*compose_cli(), "--profile", "site", "config"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **SITE_ENV},
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def test_every_service_restarts_and_has_a_healthcheck(services: dict[str, dict]) -> None:
    assert {"edge", "cloud", "planner", "recorder", "dashboard", *BROKERS} <= set(services)
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "on-failure", "always"), name
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), name


def test_roles_start_once_what_they_need_is_healthy(services: dict[str, dict]) -> None:
    for name, service in services.items():
        if name in BROKERS:
            assert "depends_on" not in service, name
            continue
        needs = service["depends_on"]
        assert "broker" in needs, name
        for other, how in needs.items():
            assert how == {"condition": "service_healthy"}, (name, other)
            assert services[other]["healthcheck"]["test"], other


def test_every_healthcheck_runs_a_command_the_image_has(services: dict[str, dict]) -> None:
    """`splitmq` subcommands parse with their arguments and run (``--help``); anything
    else must come from a package the Dockerfile installs."""
    app = typer.main.get_command(build())
    apt = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if "apt-get install" in line
    ]
    helped: set[str] = set()
    for name, service in services.items():
        kind, *argv = service["healthcheck"]["test"]
        assert kind == "CMD", f"{name}: exec form, no shell needed: {argv}"
        if argv[0] != "splitmq":
            assert any(PACKAGE_OF.get(argv[0], "?") in line for line in apt), (name, argv)
            continue
        with app.context_class(app) as ctx:
            sub = app.get_command(ctx, argv[1])
            assert sub is not None, f"{name}: no splitmq subcommand {argv[1]!r}"
            sub.make_context(argv[1], argv[2:], parent=ctx)  # raises on a bad argument
        if argv[1] not in helped:
            ran = subprocess.run(
                [sys.executable, "-m", "splitmq", argv[1], "--help"], capture_output=True, text=True
            )
            assert ran.returncode == 0, ran.stderr
            helped.add(argv[1])


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def test_each_healthcheck_asks_what_its_service_serves(services: dict[str, dict]) -> None:
    """A role's check reads the port its command serves /healthz on (its metrics port),
    on the container's loopback; the broker's asks MQTT on its own plain port."""
    for name, service in services.items():
        url = urlsplit(service["healthcheck"]["test"][-1])
        command = service["command"]
        assert url.hostname == "127.0.0.1", name
        if name in BROKERS:
            assert url.scheme == "mqtt" and url.port == int(_flag(command, "--port") or 1883)
            continue
        assert url.scheme == "http" and str(url.port) == _flag(command, "--metrics-port"), name
        assert url.path == "/healthz", name


def test_published_ports_are_the_hosts_loopback_but_the_brokers_tls(
    services: dict[str, dict],
) -> None:
    """An exporter and the dashboard have no login: only the host itself reaches them. A
    published metrics port is bound on every interface of its container, or the published
    port would reach nothing."""
    for name, service in services.items():
        for port in service.get("ports", []):
            if name in BROKERS:
                mapped = f"{BROKERS[name]}:{_flag(service['command'], '--tls-port')}"
                if isinstance(port, dict):  # docker compose v2 writes it out
                    port = f"{port['published']}:{port['target']}"
                assert str(port).startswith(mapped), (name, port)
                continue
            host, _, target = str(port).removesuffix("/tcp").split(":")
            assert host == "127.0.0.1", (name, port)
            if target == _flag(service["command"], "--metrics-port"):
                assert service["environment"]["SPLITMQ_METRICS_HOST"] == "0.0.0.0", name
        if name not in (*BROKERS, "dashboard") and not service.get("ports"):
            assert "SPLITMQ_METRICS_HOST" not in service.get("environment", {}), name


def test_one_recorder_keeps_every_tiers_answers(services: dict[str, dict]) -> None:
    """The results store is fed from result/+ by the recorder alone, with a retention."""
    recording = {n for n, s in services.items() if "--results" in s["command"]}
    assert recording == {"recorder"}
    command = services["recorder"]["command"]
    assert command[0] == "recorder" and _flag(command, "--keep")


def test_the_site_broker_is_opt_in_and_bridged_from_the_settings(
    services: dict[str, dict],
) -> None:
    """Only the site's broker has a profile, so `docker compose up` runs as before. It is
    the broker's command plus the bridge: the site and the cloud's URL from the host's
    settings, the login `splitmq secure add-site` wrote, read-only; a data volume of
    its own (its queue for the WAN). The real CLI parses the command."""
    profiled = {n: s["profiles"] for n, s in RAW["services"].items() if "profiles" in s}
    assert profiled == {"site-broker": ["site"]}
    site, cloud = services["site-broker"], services["broker"]
    command = site["command"]
    assert command[: len(cloud["command"])] == cloud["command"]
    assert _flag(command, "--site") == SITE_ENV["SPLITMQ_SITE"]
    assert _flag(command, "--bridge") == SITE_ENV["SPLITMQ_BRIDGE"]
    login = _flag(command, "--bridge-login")
    assert login == f"/bridge/{SITE_ENV['SPLITMQ_SITE']}.env"
    mounts = {_target(v): v for v in site["volumes"]}
    assert _read_only(mounts["/bridge"]) and _read_only(mounts["/secure"])
    assert _source(mounts["/data"]) != _source({_target(v): v for v in cloud["volumes"]}["/data"])
    app = typer.main.get_command(build())
    with app.context_class(app) as ctx:
        broker = app.get_command(ctx, command[0])
        assert broker is not None
        parsed = broker.make_context(command[0], command[1:], parent=ctx)
    assert parsed.params["site"] == SITE_ENV["SPLITMQ_SITE"]
    assert str(parsed.params["bridge_login"]) == login


def _target(volume: str | dict) -> str:
    return volume["target"] if isinstance(volume, dict) else volume.split(":")[1]


def _source(volume: str | dict) -> str:
    return volume["source"] if isinstance(volume, dict) else volume.split(":")[0]


def _read_only(volume: str | dict) -> bool:
    if isinstance(volume, dict):
        return bool(volume.get("read_only"))
    return volume.split(":")[2:] == ["ro"]
