"""The CUDA-graph cache's bookkeeping, with a recording function that runs on the CPU.

The real recording (``record_cuda_graph``) needs a GPU: tests/gpu/ checks it there.
"""

import warnings
import weakref

import pytest
import torch

from napari_treg.models import cuda_graphs, load_model
from napari_treg.models.cuda_graphs import GraphCache


class FakeRecorder:
    """Records like record_cuda_graph (static buffers, replay copies in) and counts recordings."""

    def __init__(self, fail_with: Exception | None = None):
        self.recorded: list[tuple] = []
        self.fail_with = fail_with

    def __call__(self, fn, inputs, pool):
        if self.fail_with is not None:
            raise self.fail_with
        self.recorded.append(tuple(t.shape for t in inputs))
        static = [t.clone() for t in inputs]

        def replay(new_inputs):
            for buffer, value in zip(static, new_inputs):
                buffer.copy_(value)
            return fn(*static)

        return replay


def affine(x, y):
    return 2 * x + y


def test_records_once_per_signature_and_replays_with_new_values():
    recorder = FakeRecorder()
    cache = GraphCache(capture=recorder)
    a, b = torch.rand(2, 3), torch.rand(2, 3)
    assert torch.equal(cache.run("f", affine, a, b), 2 * a + b)
    c = torch.rand(2, 3)
    assert torch.equal(cache.run("f", affine, c, b), 2 * c + b)  # replayed with the new input
    assert len(recorder.recorded) == 1
    cache.run("f", affine, torch.rand(4, 3), torch.rand(4, 3))  # new shape: new graph
    cache.run("g", affine, a, b)  # same shapes, other call: new graph
    cache.run("f", affine, a.double(), b.double())  # new dtype: new graph
    assert len(recorder.recorded) == 4 and len(cache) == 4


def test_failed_recording_warns_once_and_runs_eagerly():
    cache = GraphCache(capture=FakeRecorder(fail_with=RuntimeError("operation not permitted when capturing")))
    a, b = torch.rand(3), torch.rand(3)
    with pytest.warns(RuntimeWarning, match="could not record the f call.*not permitted"):
        assert torch.equal(cache.run("f", affine, a, b), 2 * a + b)
    c = torch.rand(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(cache.run("f", affine, c, b), 2 * c + b)  # eager
    assert caught == []  # warned once, not at every call


class FailsOnce(FakeRecorder):
    def __call__(self, fn, inputs, pool):
        error, self.fail_with = self.fail_with, None
        if error is not None:
            raise error
        return super().__call__(fn, inputs, pool)


OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_while_recording_drops_the_other_graphs_and_retries_once():
    recorder = FailsOnce()
    cache = GraphCache(capture=recorder)
    cache.run("f", affine, torch.rand(3), torch.rand(3))
    recorder.fail_with = OOM
    a, b = torch.rand(3), torch.rand(3)
    assert torch.equal(cache.run("g", affine, a, b), 2 * a + b)
    assert len(cache) == 1  # only the new graph: "f" was dropped to make room


def test_when_memory_stays_short_calls_run_eagerly_instead_of_recording_again_and_again():
    recorder = FakeRecorder()
    cache = GraphCache(capture=recorder)
    cache.run("f", affine, torch.rand(3), torch.rand(3))
    recorder.fail_with = OOM  # even after dropping "f"
    a, b = torch.rand(3), torch.rand(3)
    with pytest.warns(RuntimeWarning, match="could not record the g call.*not enough GPU memory"):
        assert torch.equal(cache.run("g", affine, a, b), 2 * a + b)  # eager: the solve goes on
    assert cache.memory_short
    recorder.fail_with = None  # memory would be there again, but no more recording until cleared
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        cache.run("h", affine, torch.rand(5), torch.rand(5))
    assert len(recorder.recorded) == 1  # only the first "f"
    cache.clear()  # the model moved or was reloaded: try again
    cache.run("h", affine, torch.rand(5), torch.rand(5))
    assert len(recorder.recorded) == 2


class RunsOutWhileHoldingBuffers(FakeRecorder):
    """Fails like a recording that ran out of memory with its input buffers already allocated."""

    def __init__(self):
        super().__init__()
        self.buffers: list[weakref.ref] = []
        self.failing = True

    def __call__(self, fn, inputs, pool):
        if not self.failing:
            return super().__call__(fn, inputs, pool)
        static_inputs = [t.clone() for t in inputs]  # referenced by this frame, i.e. by the traceback
        self.buffers += [weakref.ref(t) for t in static_inputs]
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")  # a new one, like torch's


@pytest.mark.parametrize("other_graphs", [False, True])
def test_memory_is_freed_after_the_failed_recording_has_let_go_of_its_buffers(monkeypatch, other_graphs):
    recorder = RunsOutWhileHoldingBuffers()
    held_when_freeing = []
    monkeypatch.setattr(
        cuda_graphs, "free_accelerator_memory", lambda: held_when_freeing.append(any(r() for r in recorder.buffers))
    )
    cache = GraphCache(capture=recorder)
    if other_graphs:  # then the cache drops them, frees memory and records once more
        recorder.failing = False
        cache.run("f", affine, torch.rand(3), torch.rand(3))
        recorder.failing = True
    with pytest.warns(RuntimeWarning, match="not enough GPU memory"):
        cache.run("g", affine, torch.rand(1000), torch.rand(1000))
    assert held_when_freeing == [False] * (2 if other_graphs else 1)  # nothing left to free was still referenced
    assert cache.memory_short


def test_cache_is_bounded():
    cache = GraphCache(capture=FakeRecorder(), max_graphs=3)
    for n in range(1, 5):
        cache.run("f", affine, torch.rand(n), torch.rand(n))
    assert len(cache) == 1  # the fourth signature found the cache full and started over


def test_graphs_are_dropped_when_the_weights_move_or_change():
    prior = load_model("tiny", device="cpu")
    for change in (lambda: prior.to("cpu"), lambda: prior.set_low_memory(True), lambda: prior.set_low_memory(False)):
        prior.graphs._graphs[("unet",)] = None  # stands for a recorded graph
        change()
        assert len(prior.graphs) == 0


def test_cpu_models_run_eagerly():
    prior = load_model("tiny", device="cpu")
    z = torch.randn(2, 4, 8, 8)
    text = prior.embed_text(["a", "b"])
    with torch.no_grad():
        prior.predict_noise(z, 10, text)
        prior.decode(z)
    assert len(prior.graphs) == 0
