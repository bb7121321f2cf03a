"""The Python API: the README's example runs against a real broker; a Device takes any
image form, follows plans and ends every request; `splitmq.plan` is `splitmq plan`."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import cli_env, run_cli
from PIL import Image
from skimage import data

import splitmq
from splitmq.broker.launcher import DEFAULT_CONFIG, Broker
from splitmq.edge.worker import edge_worker
from splitmq.planner.service import PlannerService
from splitmq.shared.errors import LoginRefused, UserError

pytestmark = pytest.mark.slow
MODEL = "efficientnet-lite0"
CAT = {"tabby", "tiger cat", "Egyptian cat"}
README = Path(__file__).parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- example: api")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert block, "the README's API example is a ```python block after its marker"
    return block.group(1)


@pytest.fixture
def cfg(settings, real_pool):
    return settings.model_copy(update={"pool": real_pool.root})


def test_the_readme_example_runs_against_a_real_broker(cfg, tmp_path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    with edge_worker(cfg, "edge-api", threads=1), PlannerService(cfg, "pl-api"):
        run = subprocess.run(
            [sys.executable, str(script)],
            env=cli_env(cfg),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    first, futures, reason = run.stdout.strip().splitlines()
    label = first.split(" answered on the ")[0].rsplit(" ", 1)[0]
    assert label in CAT, first
    assert first.split()[-1] in ("device", "edge", "cloud")
    assert futures.startswith("[") and futures.count("'") == 8  # four labels
    assert reason  # the planner's sentence


def test_a_device_takes_any_image_form_and_pins_plans(cfg, tmp_path) -> None:
    photo = data.chelsea()
    jpeg = io.BytesIO()
    Image.fromarray(photo).save(jpeg, format="PNG")
    (tmp_path / "cat.png").write_bytes(jpeg.getvalue())
    decision = splitmq.plan(
        MODEL, uplink="100mbit", rtt="2ms", device_speed=0.05, tiers=("edge",), settings=cfg
    )
    assert decision.plan.tiers == ("edge",)  # a slow device on a fast link offloads
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(decision.plan.to_json())
    with (
        edge_worker(cfg, "edge-forms", threads=1),
        splitmq.Device(MODEL, settings=cfg, plan=plan_file) as device,
    ):
        forms = [photo, Image.fromarray(photo), jpeg.getvalue(), tmp_path / "cat.png"]
        answers = [device.infer(form) for form in forms]
        with pytest.raises(UserError, match="not a JPEG or PNG"):
            device.infer(b"not an image")
        with pytest.raises(UserError, match="cannot read the image"):
            device.infer(tmp_path / "missing.jpg")
    assert {a.label for a in answers} <= CAT and len({a.top1 for a in answers}) == 1
    assert {a.tier for a in answers} == {"edge"}
    assert isinstance(answers[0], splitmq.Answer)


def test_a_device_is_named_after_its_mqtt_user_by_default(cfg) -> None:
    """With `splitmq secure` a device may use only its user name as client id: without
    ``device_id`` that is its id (the setting's, or the broker URL's), else a random one."""
    user = cfg.model_copy(update={"username": "cam7"})
    url = cfg.model_copy(update={"broker": f"mqtt://cam8:pw@{cfg.broker}"})
    assert splitmq.Device("mnist-cnn", settings=user).id == "cam7"
    assert splitmq.Device("mnist-cnn", settings=url).id == "cam8"
    assert splitmq.Device("mnist-cnn", settings=user, device_id="bench-1").id == "bench-1"
    assert re.fullmatch(r"app-[0-9a-f]{8}", splitmq.Device("mnist-cnn", settings=cfg).id)


def test_a_device_refused_under_an_id_not_its_user_name_is_told_why(real_pool, tmp_path) -> None:
    config = tmp_path / "closed.conf"
    config.write_text(
        DEFAULT_CONFIG.read_text().replace("allow_anonymous true", "allow_anonymous false")
    )
    with Broker(config=config) as closed:  # refuses everyone: no user may log in
        cfg = closed.settings(pool=real_pool.root, username="cam7", password="pw")
        with (
            pytest.raises(LoginRefused, match=r"device 'bench-1' logs in as user 'cam7': "),
            splitmq.Device("mnist-cnn", settings=cfg, device_id="bench-1"),
        ):
            pass
        with pytest.raises(LoginRefused) as own_id, splitmq.Device("mnist-cnn", settings=cfg):
            pass
    assert "refused cam7: Not authorized" in str(own_id.value)
    assert "logs in as" not in str(own_id.value)  # the id is the user name: no hint


def test_plan_weighs_the_situation_and_the_cli_passes_its_flags(real_pool) -> None:
    cfg = _pool(real_pool)
    slow_link = splitmq.plan(MODEL, uplink="0.5mbit", rtt="40ms", device_speed=1.0, settings=cfg)
    slow_device = splitmq.plan(MODEL, uplink="200mbit", rtt="2ms", device_speed=0.05, settings=cfg)
    assert slow_link.plan.device_only and not slow_device.plan.device_only
    assert slow_device.predicted.latency_ms < slow_device.fixed["device-only"].latency_ms
    decision = splitmq.plan(
        MODEL, uplink="5mbit", rtt="40ms", device_speed=0.25, settings=_pool(real_pool)
    )
    cli = run_cli(
        "plan", MODEL, "--uplink", "5mbit", "--rtt", "40ms", "--device-speed", "0.25", "--json",
        env=cli_env(pool=real_pool.root),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    said = json.loads(cli.stdout)
    mine = decision.to_json()
    same = ("cut", "codec", "route", "version")
    assert {k: said["plan"][k] for k in same} == {k: mine["plan"][k] for k in same}
    assert said["predicted"] == pytest.approx(mine["predicted"])
    with pytest.raises(UserError, match="tiers"):
        splitmq.plan(MODEL, uplink="5mbit", tiers=("fog",), settings=_pool(real_pool))
    with pytest.raises(UserError, match="bad uplink"):
        splitmq.plan(MODEL, uplink="fast", settings=_pool(real_pool))
    with pytest.raises(UserError, match="objective"):
        splitmq.wants(objective="speed")


def test_the_public_api_is_named_and_loads_lazily() -> None:
    for name in splitmq.__all__:
        assert getattr(splitmq, name) is not None
    fresh = subprocess.run(
        [sys.executable, "-c", "import splitmq, sys; print('splitmq.api' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fresh.stdout.strip() == "False"


def test_errors_name_a_parameter_as_the_caller_spells_it() -> None:
    """The API names its own parameters; the CLI has them said as its flags."""
    with pytest.raises(UserError, match=r"^bad max_bytes 'lots'"):
        splitmq.wants(max_bytes="lots")
    with pytest.raises(UserError, match=r"^bad --max-bytes 'lots'"):
        splitmq.wants(max_bytes="lots", name_of=lambda p: "--" + p.replace("_", "-"))
    with pytest.raises(UserError, match=r"^OBJECTIVE must be latency"):
        splitmq.wants(objective="fast", name_of=str.upper)


def _pool(real_pool):
    from splitmq.shared.settings import Settings

    return Settings(pool=real_pool.root)
