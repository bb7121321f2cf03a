"""Early exits end to end: the whole Fashion-MNIST test set over MQTT, exits vs always-escalate.

The target is the final exit's accuracy minus one point. The threshold is the
lowest max-softmax threshold whose delivered accuracy on the model's stored
curve (measured at build time on the same test split) meets the target.
Each role runs in its own process: `splitmq broker`'s mosquitto, an edge and
a cloud worker, and `splitmq device --source fashion-mnist:test` sending the
28x28 input as u8; the edge runs to the second exit (cut 10) and answers
there when an exit is confident, else escalates cut 10 to the cloud. The
same stream with no exit threshold is the always-escalate baseline. Reported:
delivered accuracy (from the device's summary against the labels), the share
answered at the edge, and the bytes that reached the cloud. Also draws the
exits' reliability diagrams before and after temperature scaling
(``docs/exits-fashion-mnist.png``).

    SPLITMQ_POOL=.pool .venv/bin/python bench/bench_exits.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from harness import bench_settings, start_worker

from splitmq.broker.launcher import Broker
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline.datasets import fashion_mnist
from splitmq.shared.offline.exit_report import outputs, temperatures
from splitmq.shared.offline.samples import from_images
from splitmq.shared.offline.temperature import ece, reliability

MODEL = "fashion-mnist-ee"
STOP = 10  # the edge runs to the second exit
PNG = Path(__file__).parent.parent / "docs" / "exits-fashion-mnist.png"


def run_device(cfg, exit_threshold: float | None) -> dict:
    env = {
        **os.environ,
        "SPLITMQ_BROKER": cfg.broker,
        "SPLITMQ_POOL": str(cfg.pool),
        "SPLITMQ_TOPIC_PREFIX": cfg.topic_prefix,
    }
    args = ["--model", MODEL, "--source", "fashion-mnist:test", "--cut", "0", "--codec", "u8"]
    args += ["--cloud-cut", str(STOP), "--window", "16", "--json"]
    args += ["--exit", str(exit_threshold)] if exit_threshold is not None else []
    done = subprocess.run(
        [sys.executable, "-m", "splitmq", "device", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def diagrams(mv: ModelVersion) -> dict:
    """Reliability diagrams of each output before and after scaling, on the test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = fashion_mnist("test")
    _, inputs = from_images(list(images), mv.manifest.preprocess)
    outs = outputs(mv, inputs)
    temps = temperatures(mv)
    fig, axes = plt.subplots(1, len(outs), figsize=(4 * len(outs), 4), sharey=True)
    eces = {}
    for ax, name, calibrated, t in zip(axes, mv.output_names, outs, temps, strict=True):
        for logits, what, style in ((calibrated * t, "before", "o--"), (calibrated, "after", "s-")):
            conf, acc, count = reliability(logits, labels)
            keep = count > 0
            e = ece(logits, labels)
            eces[f"{name} {what}"] = e
            ax.plot(conf[keep], acc[keep], style, label=f"{what} (T={t:.2f})  ECE {e:.4f}"
                    if what == "after" else f"{what}  ECE {e:.4f}")  # fmt: skip
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(name)
        ax.set_xlabel("confidence (max softmax)")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle("fashion-mnist-ee: reliability on the 10,000 test images")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    return eces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    pool = Path(os.environ.get("SPLITMQ_POOL", ".pool")).resolve()
    mv = ModelPool(pool).get(MODEL)
    report = mv.manifest.exits
    assert report is not None, "build it: splitmq models build fashion-mnist-ee"
    target = round(report.final_accuracy - 0.01, 4)
    curve = report.curve("max_softmax")
    threshold = next(t for t, a in zip(curve.thresholds, curve.accuracy) if a >= target)
    with Broker() as broker:
        cfg = bench_settings(broker, pool)
        workers = [
            start_worker(cfg, 2, "edge", "fm-edge"),
            start_worker(cfg, 2, "cloud", "fm-cloud"),
        ]
        try:
            exits = run_device(cfg, threshold)
            always = run_device(cfg, None)
        finally:
            for w in workers:
                w.terminate()
                w.wait()
    result = {
        "target": target,
        "threshold": threshold,
        "curve_accuracy": curve.accuracy[curve.thresholds.index(threshold)],
        "delivered_accuracy": exits["accuracy"],
        "always_escalate_accuracy": always["accuracy"],
        "edge_share": round(exits["by_tier"].get("edge", 0) / exits["answered"], 4),
        "cloud_bytes": exits["cloud_bytes"],
        "always_escalate_cloud_bytes": always["cloud_bytes"],
        "cloud_bytes_ratio": round(exits["cloud_bytes"] / always["cloud_bytes"], 4),
        "p50_ms": exits["p50_ms"],
        "always_escalate_p50_ms": always["p50_ms"],
        "frames": exits["frames"],
        "lost": exits["lost"] + always["lost"],
        "failed": exits["failed"] + always["failed"],
        "ece": diagrams(mv),
    }
    print(json.dumps(result, indent=1) if opts.json else result)


if __name__ == "__main__":
    main()
