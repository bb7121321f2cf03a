"""Execution providers on a CPU-only box: choosing them, falling back, profiles per provider,
and the planner pricing a tier with the profile of the provider its workers report.

Nothing here needs a GPU: "this onnxruntime build" is pinned to a CPU-only one
(``cpu_build``), and the session-level checks use a provider this build lacks.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from clitools import cli_env, run_cli
from graphs import chain
from planning import NO_OVERHEAD, add, profile_of, row, table

from splitmq.planner import DeviceState, Link, Options, evaluate
from splitmq.planner.fleet import tier_states
from splitmq.planner.options import EDGE
from splitmq.shared.errors import UserError
from splitmq.shared.model import providers
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.profile import Profile
from splitmq.shared.protocol.telemetry import WorkerTelemetry, parse_telemetry
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.runtime.stats import Stats, worker_telemetry

CPU_EP = "CPUExecutionProvider"
#: A provider this onnxruntime build does not offer (on any build some are missing).
ABSENT = next(p for p in providers.PROVIDERS.values() if p not in ort.get_available_providers())


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts in a process that has logged no fallback yet."""
    monkeypatch.setattr(providers, "_warned", set())


@pytest.fixture
def cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """This onnxruntime build offers the CPU only (as the wheel on this box does)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU_EP])


@pytest.fixture
def tiny(tmp_path: Path) -> ModelVersion:
    """The chain graph: cuts 0..6."""
    return add(tmp_path, chain(), "chain")


def cuda_profile(segments: list[float], measured_at: float = 2.0) -> Profile:
    return profile_of(segments).model_copy(update={"provider": "cuda", "measured_at": measured_at})


# --- choosing providers -----------------------------------------------------------------


def test_cpu_resolves_to_onnx_runtimes_name(cpu_build: None) -> None:
    assert providers.resolve("cpu") == [CPU_EP]
    assert providers.resolve(" CPU ") == [CPU_EP]


def test_a_missing_provider_alone_is_a_clear_error(cpu_build: None) -> None:
    with pytest.raises(UserError) as caught:
        providers.resolve("cuda")
    assert str(caught.value) == (
        "cuda is not available in this onnxruntime build (available: cpu); install "
        "onnxruntime-gpu (and CUDA 12, cuDNN 9) or list a fallback: --providers cuda,cpu"
    )


def test_a_missing_provider_falls_back_to_a_later_one_with_one_warning(
    cpu_build: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=providers.__name__):
        assert providers.resolve("cuda,cpu") == [CPU_EP]
        assert providers.resolve("cuda,cpu") == [CPU_EP]  # a second worker start: no repeat
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == (
        "cuda not available in this onnxruntime build (available: cpu): running on cpu"
    )


@pytest.mark.parametrize(
    ("wanted", "says"),
    [
        ("nosuch", "unknown execution provider 'nosuch' (known: cpu, cuda, tensorrt, "),
        ("cuda,gpu", "unknown execution provider 'gpu'"),
        ("cuda,,cpu", "providers 'cuda,,cpu': a comma-separated list"),
    ],
)
def test_an_unknown_provider_is_an_error_naming_the_known_ones(wanted: str, says: str) -> None:
    with pytest.raises(UserError, match=re.escape(says)):
        providers.resolve(wanted)


@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's own, about ABSENT
def test_a_session_that_does_not_start_its_provider_fails_or_falls_back_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ONNX Runtime itself runs a session on the CPU when a provider does not start (here:
    one this build lacks, passed past ``resolve``): never silently."""
    model = chain()
    short = providers.short_name(ABSENT)
    with pytest.raises(UserError, match=f"^ONNX Runtime could not start {short} "):
        make_session(model, providers=[ABSENT])
    with caplog.at_level(logging.WARNING, logger=providers.__name__):
        session = make_session(model, providers=[ABSENT, CPU_EP])
    assert session.get_providers() == [CPU_EP]
    assert [r.getMessage() for r in caplog.records] == [
        f"ONNX Runtime could not start {short} (check that its libraries load): running on cpu"
    ]


def test_a_session_cache_resolves_at_construction_and_reports_its_provider(
    cpu_build: None, tiny: ModelVersion
) -> None:
    pool = ModelPool(tiny.dir.parent.parent)
    with pytest.raises(UserError, match=r"^cuda is not available"):
        SessionCache(pool, 1, "cuda")  # before any request: a worker fails at start
    sessions = SessionCache(pool, 1, "cuda,cpu")
    assert sessions.providers == [CPU_EP] and sessions.provider == "cpu"
    segment = sessions.segment(sessions.model("chain"), 2, tiny.last_cut)
    assert segment.session.get_providers() == [CPU_EP] and segment.provider == "cpu"
    assert sessions.provider == "cpu"


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_provider_that_does_not_start_fails_the_cache_at_construction(
    monkeypatch: pytest.MonkeyPatch, tiny: ModelVersion, caplog: pytest.LogCaptureFixture
) -> None:
    """The build lists the provider but it does not start (its libraries are missing)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [ABSENT, CPU_EP])
    pool, short = ModelPool(tiny.dir.parent.parent), providers.short_name(ABSENT)
    with pytest.raises(UserError, match=f"^ONNX Runtime could not start {short} "):
        SessionCache(pool, 1, short)
    with caplog.at_level(logging.WARNING, logger=providers.__name__):
        sessions = SessionCache(pool, 1, f"{short},cpu")
    assert sessions.providers == [ABSENT, CPU_EP] and sessions.provider == "cpu"
    assert len(caplog.records) == 1 and "running on cpu" in caplog.records[0].getMessage()


# --- telemetry --------------------------------------------------------------------------


def test_a_worker_reports_its_provider_and_older_reports_stay_valid() -> None:
    stats: Stats[tuple[str, int, int, int | None]] = Stats()
    args = ("edge", "w", 1.0, stats, [], None)
    doc = worker_telemetry(*args, in_flight=0, threads=1, queued=0, provider="cuda")
    assert json.loads(doc.to_json())["provider"] == "cuda"
    on_cpu = worker_telemetry(*args, in_flight=0, threads=1, queued=0, provider="cpu")
    raw = json.loads(on_cpu.to_json())
    assert "provider" not in raw  # a reader from before it still reads what a CPU worker sends
    parsed = parse_telemetry(json.dumps(raw).encode())
    assert isinstance(parsed, WorkerTelemetry) and parsed.provider is None


# --- profiles per provider --------------------------------------------------------------


def test_profiles_are_kept_per_host_and_provider(tiny: ModelVersion) -> None:
    cpu, cuda = profile_of([1.0] * 6), cuda_profile([0.1] * 6)
    tiny.save_profile(cpu)
    tiny.save_profile(cuda)
    manifest = tiny.manifest
    assert manifest.profile_for(cpu.host) == cpu  # the CPU's by default
    assert manifest.profile_for(cpu.host, "cuda") == cuda
    assert manifest.profile_for(cpu.host, "openvino") is None
    newer = cuda_profile([0.2] * 6, measured_at=3.0)
    manifest = tiny.save_profile(newer)  # replaces the cuda one only
    assert [p.provider for p in manifest.profiles] == ["cpu", "cuda"]
    assert manifest.profile_for(cpu.host, "cuda") == newer


def test_a_manifest_from_before_providers_loads_its_profiles_as_cpu(tiny: ModelVersion) -> None:
    tiny.save_profile(profile_of([1.0] * 6))
    path = tiny.dir / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["profiles"][0]["provider"]
    path.write_text(json.dumps(raw))
    (loaded,) = ModelPool(tiny.dir.parent.parent).get("chain").manifest.profiles
    assert loaded.provider == "cpu"


# --- the planner ------------------------------------------------------------------------


def worker(provider: str | None, p50_ms: float | None = None, last: int = 6) -> WorkerTelemetry:
    """An edge worker's telemetry; with ``p50_ms``: it measured segment 2 -> the outputs."""
    service = (
        []
        if p50_ms is None
        else [
            {
                "model": "chain",
                "version": 1,
                "from": 2,
                "to": None,
                "p50_ms": p50_ms,
                "p95_ms": p50_ms,
                "n": 64,
            }
        ]
    )
    return WorkerTelemetry.model_validate(
        {
            "role": "edge",
            "id": "w",
            "ts": 1.0,
            "rps": 0.0,
            "in_flight": 0,
            "errors": {},
            "threads": 1,
            "queued": 0,
            "models": [],
            "service": service,
            "served": 64,
            "duplicates": 0,
            "answered": 64,
            "forwarded": {},
            "provider": provider,
        }
    )


@pytest.fixture
def options(tiny: ModelVersion) -> Options:
    """Chain with a CPU profile of 10 ms a segment and a newer cuda one of 1 ms a segment."""
    tiny.save_profile(profile_of([10.0] * 6))
    tiny.save_profile(cuda_profile([1.0] * 6))
    tiny.save_calibration(table([row(2, "int8", 1000, 1.0)]))
    return Options.of(tiny)


def test_the_planner_prices_a_tier_with_the_profile_of_its_provider(options: Options) -> None:
    assert options.profile.provider == "cpu"  # the device's head: the CPU's, though older
    assert float(options.head_ms[2]) == 20.0
    device = DeviceState(link=Link(8e6, 10.0))
    i = options.find(EDGE, 2, "int8")
    latency = {}
    for provider in ("cpu", "cuda", None):
        (edge,) = tier_states([worker(provider)], options).values()
        assert edge.provider == (provider or "cpu")
        latency[provider] = evaluate(options, device, {"edge": edge}, 0.99, NO_OVERHEAD)
    # segment 2 -> 6 on the edge: 4 x 10 ms on the CPU, 4 x 1 ms on cuda
    assert latency["cpu"].latency_ms[i] - latency["cuda"].latency_ms[i] == pytest.approx(36.0)
    assert latency[None].latency_ms[i] == latency["cpu"].latency_ms[i]  # older workers: cpu
    assert latency["cuda"].latency_ms[0] == latency["cpu"].latency_ms[0]  # device only: same


def test_a_tiers_speed_is_measured_against_its_providers_profile(options: Options) -> None:
    """A cuda worker taking 4 ms for 2 -> 6 runs as its cuda profile predicts (speed 1);
    against the CPU profile (40 ms) it would look 10x as fast and price every other
    segment that way."""
    (edge,) = tier_states([worker("cuda", p50_ms=4.0)], options).values()
    assert edge.speed == pytest.approx(1.0)
    (cpu,) = tier_states([worker("cpu", p50_ms=4.0)], options).values()
    assert cpu.speed == pytest.approx(10.0)


def test_a_provider_without_a_profile_is_priced_with_the_cpu_one_logged_once(
    options: Options, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="splitmq.planner.options"):
        for _ in range(2):
            (edge,) = tier_states([worker("openvino")], options).values()
    assert edge.provider == "openvino"
    assert np.array_equal(options.tier_segment_ms("openvino"), options.segment_ms)
    (warning,) = caplog.records
    assert "chain@1 has no openvino profile" in warning.getMessage()
    assert "splitmq profile chain@1 --providers openvino" in warning.getMessage()


# --- the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["edge", "--providers", "nosuch", "--connect-timeout", "1s"],
        ["profile", "chain", "--providers", "nosuch"],
    ],
)
def test_a_bad_provider_on_the_command_line_is_one_line_and_status_2(
    args: list[str], tiny: ModelVersion
) -> None:
    env = cli_env(pool=tiny.dir.parent.parent)
    env["SPLITMQ_BROKER"] = "mqtt://127.0.0.1:9"  # nothing listens: a worker must fail first
    done = run_cli(*args, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "unknown execution provider 'nosuch' (known: cpu, cuda, " in line
