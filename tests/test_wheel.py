"""splitmq as users get it: a wheel, installed into a fresh venv, not the checkout.

An editable install finds every file in the checkout, so it hides packaging
mistakes: a data file that does not ship, a path that walks up out of the
package. Here the wheel is built from a copy of only what it is built from
(:func:`wheel_inputs`, which the Dockerfile's build stage copies too, see
test_deploy.py), with the venv's setuptools and no network, and installed with
``--no-deps`` into a venv made without system site-packages. The broker and
the ``splitmq`` console script then run from that venv.

The runtime dependencies are not installed again (that needs the network and
minutes): a ``.pth`` file in the new venv appends this interpreter's
site-packages to ``sys.path``. A directory appended by a ``.pth`` line is a
plain path entry: the ``.pth`` files inside it, such as the editable install's
``__editable__.splitmq-*.pth`` that installs an import hook onto the checkout,
are never executed, and the new venv's own site-packages comes first.
:func:`test_splitmq_is_imported_from_the_wheel` checks both.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import site
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from graphs import residual

from splitmq.broker.launcher import free_port
from splitmq.shared.transport.mqtt import MqttClient

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_WARNINGS = ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "absent from the")


def package_folders() -> dict[str, str]:
    """Package name -> folder in the checkout (``splitmq.broker`` -> ``broker``)."""
    return dict(PYPROJECT["tool"]["setuptools"]["package-dir"])


def wheel_inputs() -> list[str]:
    """Everything the wheel is built from: pyproject.toml, the readme, the package folders."""
    readme = PYPROJECT["project"]["readme"]
    readme = readme if isinstance(readme, str) else readme["file"]
    return ["pyproject.toml", readme, *sorted(set(package_folders().values()))]


@dataclass(frozen=True)
class Installed:
    src: Path  # the copy the wheel was built from
    wheel: Path
    build_log: str
    venv: Path
    site: Path  # the new venv's site-packages
    deps: list[str]  # this interpreter's site-packages, appended by a .pth file
    env: dict[str, str]
    cwd: Path  # an empty directory: no `splitmq` folder next to the scripts

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def splitmq(self) -> Path:
        return self.venv / "bin" / "splitmq"


def run(*cmd: object, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stderr}"
    return result


def copy_inputs(dest: Path) -> None:
    """Copy what the wheel is built from; a symlink becomes a copy of the file it names."""
    dest.mkdir()
    for name in wheel_inputs():
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, venv, cwd = tmp / "src", tmp / "dist", tmp / "venv", tmp / "cwd"
    copy_inputs(src)  # not the checkout: no stale build/, no files the wheel cannot see
    pip = [sys.executable, "-m", "pip"]
    # The venv's setuptools, no network: -v shows the backend's warnings.
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    build = run(*pip, "wheel", "-v", *offline, "-w", dist, src, cwd=src)
    (wheel,) = dist.glob("splitmq-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # This pip installs into the new venv (--python) while it still sees nothing else.
    run(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel)
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    site_dir = Path(purelib.stdout.strip())
    deps = [
        *site.getsitepackages(),
        *([site.getusersitepackages()] if site.ENABLE_USER_SITE else []),
    ]
    deps = [d for d in deps if Path(d).is_dir() and Path(d) != site_dir]
    (site_dir / "zz_splitmq_test_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "SPLITMQ_")) and k != "VIRTUAL_ENV"
    }
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "200"}
    cwd.mkdir()
    log = build.stdout + build.stderr
    return Installed(src, wheel, log, venv, site_dir, deps, env, cwd)


def in_venv(installed: Installed, code: str, timeout: float = 60) -> dict:
    """Run ``code`` with the new venv's python (isolated mode); it prints one JSON object."""
    result = run(
        installed.python,
        "-I",
        "-c",
        textwrap.dedent(code),
        env=installed.env,
        cwd=installed.cwd,
        timeout=timeout,
    )
    return json.loads(result.stdout)


def splitmq(installed: Installed, *args: object, **env: str) -> subprocess.CompletedProcess[str]:
    """The new venv's ``splitmq`` console script; the caller checks the exit status."""
    return subprocess.run(
        [str(installed.splitmq), *map(str, args)],
        env=installed.env | env,
        cwd=installed.cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_build_is_clean(installed: Installed) -> None:
    noisy = [
        line for line in installed.build_log.splitlines() if any(w in line for w in BUILD_WARNINGS)
    ]
    assert not noisy, "\n".join(noisy)


def test_the_wheel_ships_every_file_of_the_package_folders(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected = set()
    for package, folder in package_folders().items():
        prefix = package.replace(".", "/")
        for path in (installed.src / folder).rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                expected.add(f"{prefix}/{path.relative_to(installed.src / folder).as_posix()}")
    assert {
        "splitmq/broker/mosquitto.conf",
        "splitmq/shared/offline/data/imagenet_classes.txt",
    } <= expected
    assert sorted(expected - names) == []
    packaged = zipfile.ZipFile(installed.wheel).read("splitmq/broker/mosquitto.conf")
    assert packaged == (ROOT / "mosquitto.conf").read_bytes()  # the top-level one, through the link


def test_splitmq_is_imported_from_the_wheel(installed: Installed) -> None:
    found = in_venv(
        installed,
        """
        import importlib.metadata, json, sys
        import splitmq, splitmq.broker, splitmq.cli
        from splitmq.broker import launcher
        from splitmq.shared.offline import zoo
        hooks = [repr(h) for h in [*sys.meta_path, *sys.path_hooks]]
        print(json.dumps({
            "files": [splitmq.__file__, splitmq.broker.__file__, splitmq.cli.__file__,
                      zoo.__file__, str(launcher.DEFAULT_CONFIG)],
            "dist": str(importlib.metadata.distribution("splitmq").locate_file("")),
            "editable": [m for m in sys.modules if "editable" in m.lower()]
                        + [h for h in hooks if "editable" in h.lower()],
            "labels": len(zoo.imagenet_labels()),
            "path": sys.path,
        }))
        """,
    )
    for file in found["files"]:
        assert Path(file).is_relative_to(installed.site), file
        assert not Path(file).resolve().is_relative_to(ROOT), file
    assert Path(found["dist"]) == installed.site
    assert found["editable"] == []
    assert found["labels"] == 1000  # the ImageNet classes shipped as package data
    path = [Path(p) for p in found["path"]]
    assert path.index(installed.site) < min(path.index(Path(d)) for d in installed.deps)
    assert ROOT not in path and Path("") not in path


def test_the_broker_starts_from_the_wheel_with_its_packaged_config(installed: Installed) -> None:
    found = in_venv(
        installed,
        """
        import json, queue
        from splitmq.broker import Broker, launcher
        from splitmq.shared.transport.mqtt import MqttClient

        inbox = queue.Queue()
        with Broker() as broker:
            with MqttClient(broker.settings().connection("wheel-check")) as client:
                client.subscribe("wheel/check", inbox.put)
                client.publish("wheel/check", b"from the wheel", wait=5)
                message = inbox.get(timeout=5)
                print(json.dumps({
                    "config": str(launcher.DEFAULT_CONFIG),
                    "port": broker.port,
                    "payload": message.payload.decode(),
                    "max_packet": client.broker_max_packet,
                }))
        """,
    )
    assert Path(found["config"]) == installed.site / "splitmq" / "broker" / "mosquitto.conf"
    assert found["port"] != 1883 and found["payload"] == "from the wheel"
    # mosquitto announced the packaged config's max_packet_size in its CONNACK
    assert f"max_packet_size {found['max_packet']}\n" in (ROOT / "mosquitto.conf").read_text()


def test_splitmq_broker_runs_from_the_console_script(
    installed: Installed, broker_dir: Path
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [installed.splitmq, "-v", "broker", "--port", str(port), "--data-dir", broker_dir / "data"],
        env=installed.env,
        cwd=installed.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while not any("Ctrl-C stops it" in line for line in seen):  # logged once it is up
            assert proc.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.1))
        with MqttClient.at("127.0.0.1", port, "wheel-console-check") as client:
            assert client.broker_max_packet is not None
        proc.send_signal(signal.SIGTERM)  # as `docker stop` does
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):  # mosquitto went with it
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert (broker_dir / "data" / "mosquitto.conf").is_file()


def test_the_console_script_inspects_and_splits_a_model(
    installed: Installed, tmp_path: Path
) -> None:
    model = tmp_path / "resnet_tiny.onnx"
    onnx.save(residual(), model)
    pool = str(tmp_path / "pool")

    inspected = splitmq(installed, "inspect", model, "--json", SPLITMQ_POOL=pool)
    assert inspected.returncode == 0, inspected.stderr
    doc = json.loads(inspected.stdout)
    assert doc["model"] == "resnet_tiny"
    assert doc["input"] == {"name": "x", "shape": [1, 4, 8, 8], "bytes": 1024}
    assert len(doc["cuts"]) > 4

    out = tmp_path / "parts"
    split = splitmq(
        installed, "split", model, "--cut", "2", "--cut", "4", "-o", out, SPLITMQ_POOL=pool
    )
    assert split.returncode == 0, split.stderr
    assert "equivalent" in split.stdout and "NOT equivalent" not in split.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cloud.onnx", "device.onnx", "edge.onnx"]
