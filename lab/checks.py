"""What each demo scenario must show (docs/benchmarks.md, the control loop, live).

Each check reads the run's plan switches (``t_s`` from the start of
streaming), its answers, the Last Wills of the edge workers, when the
devices' link schedules began and, for link-drop, the best fixed plan
measured at the end of the run; it returns ``{name: {"value", "target", "ok"}}``.
"""

from __future__ import annotations

from splitmq.shared.runtime.stats import percentiles


def _link_drop(devices, switches, ok, t0, wills, reference, started) -> dict:
    """How soon after the drop device 0 left its plan, and, once it reached the plan it
    ended on (``settled_after_drop_s``, reported), how close its p50 is to the best."""
    drop = started[0] + 10.0 - t0
    final = devices[0].plan.words
    mine = [s for s in switches if s["device"] == devices[0].id and s["t_s"] > drop]
    moved = mine[0]["t_s"] if mine else None
    landed = next((s["t_s"] for s in mine if s["to"] == final), None)
    after = [a.e2e_ms for k, t, a in ok if k == 0 and landed is not None and t - t0 > landed + 1]
    p50 = (percentiles(after) or {}).get("p50_ms")
    ratio = round(p50 / reference["best_ms"], 3) if p50 and reference else None
    return {
        "switch_after_drop_s": _check(None if moved is None else round(moved - drop, 2), 3.0),
        "settled_after_drop_s": _check(None if landed is None else round(landed - drop, 2), 10.0),
        "p50_vs_best_fixed": _check(ratio, 1.2),
    }


def _edge_failure(devices, switches, ok, t0, wills, reference, started) -> dict:
    """For each device on the edge when it died: from the Last Will to its next plan, and
    whether it is back on the edge once the edge is."""
    died = [w - t0 for w in wills if w - t0 >= 7.0]
    will = min(died) if died else None
    delays, back, on_edge = [], 0, 0
    for dev in devices:
        mine = [s for s in switches if s["device"] == dev.id]
        before = [s for s in mine if will is not None and s["t_s"] <= will]
        if not before or "edge" not in before[-1]["to"]:
            continue  # not on the edge when it died
        on_edge += 1
        after = [s for s in mine if will is not None and s["t_s"] > will and "edge" not in s["to"]]
        delays.append(after[0]["t_s"] - will if after else float("inf"))
        back += any(s["t_s"] > 16.0 and "edge" in s["to"] for s in mine)
    delay = round(max(delays), 2) if delays else None
    return {
        "failover_after_will_s": _check(delay, 1.0),
        "back_on_the_edge": {
            "value": back,
            "target": f"{on_edge} (those on it when it died)",
            "ok": on_edge > 0 and back == on_edge,
        },
    }


def _crowd(devices, switches, ok, t0, wills, reference, started) -> dict:
    on_edge = sum(1 for d in devices if "edge" in d.plan.words)
    return {
        "devices_on_the_edge": {
            "value": on_edge,
            "target": f"< {len(devices)}",
            "ok": 0 < on_edge < len(devices),
        }
    }


def _battery(devices, switches, ok, t0, wills, reference, started) -> dict:
    energy = [s for s in switches if s["reason"].startswith("planner: battery at")]
    return {
        "planned_for_energy": {
            "value": energy[0]["t_s"] if energy else None,
            "target": "a switch whose reason names the battery",
            "ok": bool(energy),
        }
    }


CHECKS = {
    "link-drop": _link_drop,
    "edge-failure": _edge_failure,
    "crowd": _crowd,
    "battery": _battery,
}


def _check(value: float | None, limit: float) -> dict:
    return {"value": value, "target": f"≤ {limit:g}", "ok": value is not None and value <= limit}
