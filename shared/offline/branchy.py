"""A multi-exit CNN for Fashion-MNIST, trained jointly in the BranchyNet way.

Three stages of 3x3 convolutions (``WIDTHS``: 32, 64, 128 channels, batch
norm, ReLU, max pooling), with a side branch after each of the first two: a
small convolution as wide as the first stage, global average pooling and a
linear layer. ``SMALL_WIDTHS`` halves every width: a quarter of the MACs, the
smaller member of the model family. The loss is the
weighted sum of the three exits' cross-entropies (``EXIT_WEIGHTS``), so the
trunk learns features the early branches can use. Training is deterministic
(fixed seed, deterministic kernels, one data order) and takes a few minutes
on two cores. The last 5,000 training images are held out for temperature
scaling (``offline.temperature``); the 10,000 test images are never trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Seed of the weights and the data order.
SEED = 0
#: Training images (the first ones); the rest of the 60,000 calibrate temperatures.
TRAIN = 55_000
EPOCHS = 5
BATCH = 128
EXIT_WEIGHTS = (0.4, 0.6, 1.0)  # exit1, exit2, final
OUTPUTS = ("exit1", "exit2", "logits")
WIDTHS = (32, 64, 128)  # channels of the three stages
SMALL_WIDTHS = (16, 32, 64)
MEAN, STD = 72.94, 90.02  # of the training pixels, in 0..255 units


def network(widths: tuple[int, int, int] = WIDTHS) -> Any:
    """The untrained network (torch is imported only here, for training and export)."""
    import torch
    from torch import nn

    w1, w2, w3 = widths

    def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    def branch(cin: int) -> nn.Sequential:
        return nn.Sequential(
            conv(cin, w1, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w1, 10)
        )

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stage1 = nn.Sequential(conv(1, w1), conv(w1, w1), nn.MaxPool2d(2))
            self.stage2 = nn.Sequential(conv(w1, w2), conv(w2, w2), nn.MaxPool2d(2))
            self.stage3 = nn.Sequential(conv(w2, w3), nn.MaxPool2d(2), nn.Flatten())
            self.exit1, self.exit2 = branch(w1), branch(w2)
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(w3 * 3 * 3, 10))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            a = self.stage1(x)
            b = self.stage2(a)
            return self.exit1(a), self.exit2(b), self.head(self.stage3(b))

    torch.manual_seed(SEED)
    return Branchy()


def train(
    images: np.ndarray,
    labels: np.ndarray,
    widths: tuple[int, int, int] = WIDTHS,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """The network of ``widths`` trained on ``images`` (N, 28, 28 uint8) and their labels."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    net = network(widths)
    x = torch.from_numpy((images.astype(np.float32)[:, None] - MEAN) / STD)
    y = torch.from_numpy(labels.astype(np.int64))
    steps = EPOCHS * -(-len(x) // BATCH)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    order = np.random.default_rng(SEED)
    done = 0
    net.train()
    for _ in range(EPOCHS):
        perm = torch.from_numpy(order.permutation(len(x)))
        for start in range(0, len(x), BATCH):
            idx = perm[start : start + BATCH]
            batch = x[idx]
            shift = order.integers(-2, 3, size=2)  # small random translations
            batch = torch.roll(batch, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            outs = net(batch)
            loss = sum(w * loss_fn(o, y[idx]) for w, o in zip(EXIT_WEIGHTS, outs, strict=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if progress:
                progress(done, steps)
    return net.eval()


def logits(net: Any, images: np.ndarray, temperatures: tuple[float, ...] | None = None) -> list:
    """Each output's logits (numpy) for ``images``, divided by its temperature if given."""
    import torch

    x = torch.from_numpy((images.astype(np.float32)[:, None] - MEAN) / STD)
    outs: list[list[np.ndarray]] = [[] for _ in OUTPUTS]
    with torch.no_grad():
        for start in range(0, len(x), 1000):
            for i, o in enumerate(net(x[start : start + 1000])):
                outs[i].append(o.numpy())
    values = [np.concatenate(o) for o in outs]
    if temperatures:
        values = [v / t for v, t in zip(values, temperatures, strict=True)]
    return values


def with_temperatures(net: Any, temperatures: tuple[float, ...]) -> Any:
    """``net`` whose outputs are divided by their temperatures: what is exported, so the
    confidence the workers compute (max softmax) is the calibrated one."""
    import torch
    from torch import nn

    scale = torch.tensor([1.0 / t for t in temperatures])

    class Calibrated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(o * scale[i] for i, o in enumerate(self.net(x)))

    return Calibrated().eval()
