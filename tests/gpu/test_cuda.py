"""What only a CUDA GPU can show: CUDA-graph replays equal eager runs, and the sampler loop
never makes the host wait for the GPU.

Skipped on machines without CUDA (CI has none); benchmarks/run_gpu_checks.sh runs this file
on a lent GPU.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_treg import restore
from napari_treg.errors import DivergenceError
from napari_treg.models import load_model
from napari_treg.models.cuda_graphs import GraphCache
from napari_treg.operators import GaussianBlur, Inpainting, SuperResolution
from napari_treg.solver import TRegSettings, treg_sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run_gpu_checks.sh)")

SETTINGS = dict(steps=12, dc_every=2, dc_until=1.0, guidance=3.0, prompt="cells", seed=3)


@pytest.fixture(scope="module", params=["float32", "float16"])
def tiny_cuda(request):
    return load_model("tiny", device="cuda", dtype=request.param)


@pytest.mark.parametrize("operator", [SuperResolution(4), GaussianBlur(1.5), "inpainting"])
def test_graphed_restore_equals_eager_restore(tiny_cuda, operator):
    image = np.random.default_rng(0).uniform(0, 1, (2, 64, 64)).astype(np.float32)
    if operator == "inpainting":
        mask = np.zeros((64, 64), bool)
        mask[20:40, 10:50] = True
        operator = Inpainting(mask)
    else:
        image = operator.forward(torch.from_numpy(image)[:, None]).numpy()[:, 0]
    tiny_cuda.cuda_graphs = False
    eager = restore(image, operator, model=tiny_cuda, batch_size=2, **SETTINGS)
    tiny_cuda.cuda_graphs = True
    graphed = restore(image, operator, model=tiny_cuda, batch_size=2, **SETTINGS)
    assert len(tiny_cuda.graphs) >= 4  # unet, decode, encode, clip_image
    tolerance = 1e-5 if tiny_cuda.dtype == torch.float32 else 2e-3
    np.testing.assert_allclose(graphed, eager, rtol=0, atol=tolerance * np.ptp(eager))
    again = restore(image, operator, model=tiny_cuda, batch_size=2, **SETTINGS)
    np.testing.assert_array_equal(again, graphed)  # replays are deterministic


def test_sampler_loop_never_waits_for_the_gpu(tiny_cuda):
    y = torch.rand(1, 3, 16, 16, device="cuda")
    text = tiny_cuda.embed_text(["cells"])
    null = tiny_cuda.embed_text([""])
    config = TRegSettings(steps=20, dc_every=3, dc_until=1.0, guidance=3.0)

    def callback(state):
        if state["i"] == 0:
            torch.cuda.set_sync_debug_mode("error")  # any synchronising call from here on raises
        if state["i"] == state["total"] - 1:
            torch.cuda.set_sync_debug_mode(0)

    def run(cb):
        return treg_sample(tiny_cuda, y, SuperResolution(4), (64, 64), text=text, null=null, config=config, callback=cb)

    run(None)  # records the graphs (recording synchronises, once)
    try:
        out = run(callback)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out).all()


def test_divergence_on_cuda_names_the_step_it_happened(tiny_cuda, monkeypatch):
    calls = []
    original = tiny_cuda.predict_noise

    def nan_from_the_fifth_call(z, t, text):
        calls.append(t)
        eps = original(z, t, text)
        return eps * float("nan") if len(calls) >= 5 else eps

    monkeypatch.setattr(tiny_cuda, "predict_noise", nan_from_the_fifth_call)
    with pytest.raises(DivergenceError, match="at step 5 of 30"):
        restore(np.zeros((16, 16)), GaussianBlur(1.0), model=tiny_cuda, steps=30, dc_every=0)


def test_a_call_that_cannot_be_recorded_runs_eagerly():
    cache = GraphCache()
    x = torch.rand(8, device="cuda")

    def syncing(v):
        return v * float(v.sum())  # .item() inside: illegal while recording a graph

    with pytest.warns(RuntimeWarning, match="could not record the syncing call"):
        out = cache.run("syncing", syncing, x)
    torch.testing.assert_close(out, x * x.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(cache.run("syncing", syncing, x), x * x.sum())
