"""The intensity range of a whole stack, exactly as local ``restore`` computes it, without loading it.

Local :func:`napari_treg.restore` maps the 0.1 and 99.9 percentiles of all planes (as float32)
to the model's -1 and 1 (:meth:`napari_treg.imaging.layout.IntensityScale.from_data`). A batch run
restores the planes one by one, so it computes that range once over the whole input and
passes it to every unit. The percentiles are found exactly with dask, chunk by chunk: a
histogram narrows each needed order statistic down to one bin, then the few values in that
bin are fetched and sorted. NumPy's linear interpolation between the two order statistics
is then repeated step by step, so the result equals ``np.percentile`` bit for bit.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from napari_treg.imaging import layout as imaging

PERCENTILES = (0.1, 99.9)  # as IntensityScale.from_data
BINS = 1024
FETCH_LIMIT = 1_000_000  # values fetched to the client to sort at once


def stack_intensity_range(planes: da.Array) -> tuple[float, float]:
    """``(low, high)`` of :meth:`IntensityScale.from_data` over ``planes`` (any float32 dask array)."""
    values = planes.astype(np.float32).ravel()
    count = int(values.size)
    if count <= FETCH_LIMIT:  # small: fetch it and do exactly what local restore does
        scale = imaging.IntensityScale.from_data(values.compute())
        return scale.low, scale.high
    virtual = (count - 1) * np.true_divide(np.asanyarray(PERCENTILES), 100)
    previous = np.floor(virtual)
    following = np.minimum(previous + 1, count - 1)
    ranks = sorted({int(r) for r in (*previous, *following)})
    stats = {rank: order_statistic(values, rank) for rank in ranks}
    below = np.array([stats[int(r)] for r in previous], dtype=np.float32)
    above = np.array([stats[int(r)] for r in following], dtype=np.float32)
    low, high = numpy_lerp(below, above, np.asanyarray(virtual - previous)).astype(np.float64)
    if not high > low:  # a constant image: the same centring as from_data
        scale = imaging.IntensityScale.from_data(np.array([low], dtype=np.float32))
        return scale.low, scale.high
    return float(low), float(high)


def numpy_lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """NumPy's interpolation between order statistics (``np.percentile``, method ``linear``)."""
    diff = b - a
    result = np.add(a, diff * t)
    np.subtract(b, diff * (1 - t), out=result, where=t >= 0.5, casting="unsafe", dtype=type(result.dtype))
    return result


def order_statistic(values: da.Array, rank: int) -> float:
    """The ``rank``-th smallest of ``values`` (0-based): histograms narrow it to one bin, then it is sorted."""
    exact = values.astype(np.float64)  # compared with float64 bin edges exactly, as np.histogram does
    low, high, closed, before = -np.inf, np.inf, True, 0
    while True:
        inside = (exact >= low) & ((exact <= high) if closed else (exact < high))
        count, smallest, largest = dask.compute(
            da.count_nonzero(inside), da.where(inside, exact, np.inf).min(), da.where(inside, exact, -np.inf).max()
        )
        if smallest == largest:
            return float(smallest)
        if count <= FETCH_LIMIT:
            return float(np.sort(exact[inside].compute())[rank - before])
        counts, edges = dask.compute(*da.histogram(exact, bins=BINS, range=(float(smallest), float(largest))))
        cumulative = np.cumsum(counts)
        index = int(np.searchsorted(cumulative, rank - before, side="right"))
        before += int(cumulative[index - 1]) if index else 0
        low, high, closed = float(edges[index]), float(edges[index + 1]), index == BINS - 1
