"""The plans a run's devices ended on, and every switch on the way, for its summary."""

from __future__ import annotations

from splitmq.device.runtime import Device


def timeline(devices: list[Device], t0: float) -> dict:
    """The plans the devices ended on, and every switch (seconds from ``t0``)."""
    changes = sorted(
        ((dev.id, s) for dev in devices for s in dev.plans.switches), key=lambda c: c[1].t
    )
    switches = [
        {
            "t_s": round(s.t - t0, 2),
            "device": device,
            "from": s.old.words,
            "to": s.new.words,
            "reason": s.reason,
        }
        for device, s in changes
    ]
    return {"plans": {dev.id: dev.plan.words for dev in devices}, "switches": switches}
