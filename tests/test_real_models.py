"""The real models (trained weights, real data): cuts, exact splits, working preprocessing."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from splitmq.shared.model.graph import make_session
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.model.split import EXACT_ATOL, max_deviation, split
from splitmq.shared.offline.datasets import mnist_digits, photos

pytestmark = pytest.mark.slow


def test_efficientnet_cut_table(real_pool):
    mv = real_pool.get("efficientnet-lite0")
    cuts = {c.name: c for c in mv.cuts}
    assert len(cuts) >= 16
    adds = [n.output[0] for n in mv.graph.nodes if re.fullmatch(r"/_blocks\.\d+/Add", n.name)]
    assert len(adds) == 9
    for name in adds:
        assert name in cuts, f"{name} is a block boundary and must be a cut"
    block14 = cuts["/_blocks.14/Add_output_0"]
    assert (block14.shape, block14.bytes, block14.dtype) == ([1, 192, 7, 7], 37_632, "float32")
    assert mv.cuts[0].name == "input" and mv.cuts[-1].name == "logits"
    assert 350e6 < mv.cuts[-1].macs_before < 450e6  # EfficientNet-Lite0: ~0.4 GMACs


def test_efficientnet_every_single_cut_and_sampled_pairs_are_exact(real_pool):
    mv = real_pool.get("efficientnet-lite0")
    x = mv.graph.sample_input()
    last = mv.last_cut
    for a in range(1, last):
        assert max_deviation(mv, split(mv, a), x) <= EXACT_ATOL, a
    rng = random.Random(0)
    for a, b in (sorted(rng.sample(range(1, last), 2)) for _ in range(12)):
        assert max_deviation(mv, split(mv, a, b), x) <= EXACT_ATOL, (a, b)


def test_mnist_every_pair_of_cuts_is_exact(real_pool):
    mv = real_pool.get("mnist-cnn")
    x = mv.graph.sample_input()
    for a in range(1, mv.last_cut):
        for b in [None, *range(a + 1, mv.last_cut)]:
            assert max_deviation(mv, split(mv, a, b), x) <= EXACT_ATOL, (a, b)


def test_mnist_weights_and_preprocessing_are_real(real_pool):
    mv = real_pool.get("mnist-cnn")
    images, labels = mnist_digits()
    pre = mv.manifest.preprocess
    x = np.concatenate([normalize(to_pixels(im, pre), pre) for im in images[-500:]])
    predicted = make_session(mv.model_bytes).run(None, {"input": x})[0].argmax(1)
    assert (predicted == labels[-500:]).mean() >= 0.97


def test_efficientnet_recognises_the_cat_and_the_coffee(real_pool):
    mv = real_pool.get("efficientnet-lite0")
    pre = mv.manifest.preprocess
    session = make_session(mv.model_bytes)
    cat, coffee = photos(2, seed=0)
    top = [
        mv.labels[int(session.run(None, {"input": normalize(to_pixels(im, pre), pre)})[0].argmax())]
        for im in (cat, coffee)
    ]
    assert top[0] in {"Egyptian cat", "tabby", "tiger cat"} and top[1] in {"espresso", "cup"}
