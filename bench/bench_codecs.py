"""Codec throughput: encode + decode speed of every codec on feature-map-sized tensors.

    .venv/bin/python bench/bench_codecs.py [--repeat 30]

Throughput is input bytes / (encode time + decode time), each the median over the
repeats, single-threaded. The target (docs/benchmarks.md) is 500 MB/s for ``int8``
and ``q4`` on a 1 MB float32 tensor; the last column is throughput / target.
Feature maps are ReLU-like (half zeros, as after a conv stage), so the lossless
stages see realistic redundancy; images are smooth gradients with noise.
"""

import argparse
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from splitmq.shared.codecs import decode, encode

TARGET_MB_S = 500.0
FLOAT_CODECS = [
    f"{base}{stage}"
    for base in ("raw", "fp16", "int8", "int8c", "q4", "q4c", "q2", "q2c", "clip4")
    for stage in ("", "+zstd", "+lz4")
]
IMAGE_CODECS = ["u8", "u8+zstd", "u8+lz4", "jpeg:90", "jpeg:75", "jpeg:50"]


def feature_map(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """ReLU output of a conv stage: about half zeros, the rest spread over [0, ~12]."""
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.standard_normal(shape), 0) * 3).astype(np.float32)


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth gradient with mild noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    height, width = shape[2], shape[3]
    ramp = np.add.outer(np.linspace(0, 160, height), np.linspace(0, 80, width))
    noisy = ramp + rng.normal(0, 6, shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Measurement:
    codec: str
    input_bytes: int
    output_bytes: int
    encode_s: float
    decode_s: float

    @property
    def mb_s(self) -> float:
        return self.input_bytes / (self.encode_s + self.decode_s) / 1e6


def measure(x: np.ndarray, codec: str, repeat: int) -> Measurement:
    """Median encode and decode times over ``repeat`` runs, after two warm-up runs."""
    encodes, decodes = [], []
    for run in range(repeat + 2):
        start = time.perf_counter()
        tensor = encode(x, codec)
        middle = time.perf_counter()
        decode(tensor)
        end = time.perf_counter()
        if run >= 2:
            encodes.append(middle - start)
            decodes.append(end - middle)
    return Measurement(
        codec, x.nbytes, len(tensor.data), float(np.median(encodes)), float(np.median(decodes))
    )


def table(title: str, rows: list[Measurement]) -> Table:
    out = Table(title=title, title_justify="left")
    for name in ("codec", "bytes out", "ratio", "encode ms", "decode ms", "MB/s", "× 500 MB/s"):
        out.add_column(name, justify="left" if name == "codec" else "right")
    for row in rows:
        versus = row.mb_s / TARGET_MB_S
        out.add_row(
            row.codec,
            f"{row.output_bytes:,}",
            f"{row.input_bytes / row.output_bytes:.1f}×",
            f"{row.encode_s * 1e3:.3f}",
            f"{row.decode_s * 1e3:.3f}",
            f"{row.mb_s:,.0f}",
            f"[{'green' if versus >= 1 else 'red'}]{versus:.2f}×[/]",
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per codec (median)")
    args = parser.parse_args()
    cases = [
        ("(1, 64, 56, 56) float32, 802,816 bytes", feature_map((1, 64, 56, 56)), FLOAT_CODECS),
        ("(1, 64, 64, 64) float32, 1 MiB", feature_map((1, 64, 64, 64)), FLOAT_CODECS),
        ("(1, 3, 224, 224) uint8 input, 150,528 bytes", image((1, 3, 224, 224)), IMAGE_CODECS),
        ("(1, 1, 1024, 1024) uint8 input, 1 MiB", image((1, 1, 1024, 1024)), IMAGE_CODECS),
    ]
    console = Console()
    console.print(
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, median of {args.repeat} runs"
    )
    for title, x, names in cases:
        console.print(table(title, [measure(x, codec, args.repeat) for codec in names]))


if __name__ == "__main__":
    main()
