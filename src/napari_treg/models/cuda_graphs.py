"""CUDA graphs for the model calls of a solve.

A TReg solve calls the UNet about 200 times and the VAE and the CLIP image tower about 57
times each, always with the same shapes. Launched kernel by kernel from Python, the SD 1.5
UNet is bound by launch overhead: 43.7 ms eager, 12.4 ms as a CUDA graph on an H200
(benchmarks/gpu_solve.py, docs/performance.md). A CUDA graph records a call's kernels once
and replays them with a single launch.

:class:`GraphCache` records one graph per call name and input signature (shapes and dtypes)
the first time it is seen, then replays it: inputs are copied into the graph's own input
buffers, and the output is cloned out of the graph's buffer before anything else runs. All
graphs of a cache share one memory pool: they run one after another on one stream, so the
pool only has to hold the largest call's intermediates. A call whose recording fails runs
eagerly from then on (with a warning). Recording never fails a solve: running out of memory
while recording drops the other graphs (their pool may hold what the new one needs) and tries
once more; if memory is still short, that call and every new one run eagerly until the cache
is cleared (recording over and over on a full GPU would cost more than it saves).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch

from napari_treg.memory import free_accelerator_memory, is_out_of_memory

#: eager runs before recording: they initialise cuDNN / cuBLAS and the allocator's blocks
WARMUP_RUNS = 2

Replay = Callable[[Sequence[torch.Tensor]], torch.Tensor]
Capture = Callable[[Callable[..., torch.Tensor], Sequence[torch.Tensor], Any], Replay]


def record_cuda_graph(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], pool: Any) -> Replay:
    """Record ``fn(*inputs)`` as a CUDA graph in ``pool``; returns ``replay(inputs) -> output``."""
    static_inputs = [torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t) for t in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        static_output = fn(*static_inputs)

    def replay(new_inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for static, value in zip(static_inputs, new_inputs):
            static.copy_(value)
        graph.replay()
        return static_output.clone()  # the next replay of any graph in the pool may overwrite it

    return replay


class GraphCache:
    """Recorded graphs by call name and input signature, sharing one memory pool.

    ``max_graphs`` bounds the memory held: when a new signature would exceed it, every graph
    is dropped (a new image size or batch size records a new set; a solve needs four).
    """

    def __init__(self, capture: Capture = record_cuda_graph, max_graphs: int = 8):
        self._capture = capture
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, Replay | None] = {}
        self._pool: Any = None
        self._warned: set[str] = set()
        self.memory_short = False  # recording ran out of memory even after freeing the others

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, name: str, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """``fn(*inputs)``, replayed from a graph recorded for this name and signature."""
        key = (name, *((tuple(t.shape), t.dtype, t.device) for t in inputs))
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                self._drop_graphs()
            self._graphs[key] = None if self.memory_short else self._record(name, fn, inputs)
        replay = self._graphs[key]
        return fn(*inputs) if replay is None else replay(inputs)

    def _shared_pool(self) -> Any:
        if self._pool is None and torch.cuda.is_available():
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def clear(self) -> None:
        """Drop every graph and the pool (needed whenever the weights move or change)."""
        self._drop_graphs()
        self.memory_short = False

    def _drop_graphs(self) -> None:
        self._graphs.clear()
        self._pool = None

    def _record(self, name: str, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Replay | None:
        try:
            return self._record_freeing_memory(fn, inputs)
        except Exception as error:  # noqa: BLE001 - any failure to record falls back to eager
            out_of_memory = is_out_of_memory(error)
            reason = str(error)
        # past the except block: the traceback, and with it the failed recording's buffers, is gone,
        # so freeing memory now returns them (inside the block they were still referenced)
        if out_of_memory:
            self.memory_short = True
            free_accelerator_memory()
            reason = "not enough GPU memory; new calls run eagerly until the model is reloaded"
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"could not record the {name} call as a CUDA graph, running it eagerly (slower): {reason}",
                RuntimeWarning,
                stacklevel=4,
            )
        return None

    def _record_freeing_memory(self, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Replay:
        """Record; out of memory with other graphs held: drop them (and their pool), then once more."""
        try:
            return self._capture(fn, inputs, self._shared_pool())
        except Exception as error:  # noqa: BLE001 - re-raised unless it is out-of-memory
            if not (is_out_of_memory(error) and any(self._graphs.values())):
                raise
        self._drop_graphs()
        free_accelerator_memory()
        return self._capture(fn, inputs, self._shared_pool())
