"""``napari-treg restore --samples N --holdout F``: the held-out check from the command line."""

from __future__ import annotations

import json

import numpy as np
import torch

from napari_treg.cli.commands import main
from napari_treg.io import files as io
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import Inpainting


def test_restore_with_holdout_prints_the_verdict_and_writes_the_uncorrected_std(tmp_path, capsys):
    missing = np.random.default_rng(3).random((16, 16)) < 0.5
    truth, _ = AnalyticPrior(classes=("disk",)).sample(1, 0, (16, 16), torch.Generator().manual_seed(1))
    image = np.moveaxis(Inpainting(missing).forward(truth)[0].numpy(), 0, -1)
    source, mask = tmp_path / "cells.tif", tmp_path / "mask.tif"
    io.write_image(source, (image + 1) / 2)
    io.write_image(mask, missing.astype(np.uint8))
    out = tmp_path / "cells_filled.tif"
    common = ["restore", str(source), "--operator", "inpaint", "--mask", str(mask), "--model", "analytic"]
    common += ["--steps", "3", "--noise", "0.05"]
    status = main([*common, "-o", str(out), "--samples", "4", "--holdout", "0.2", "--info", str(tmp_path / "run.json")])
    assert status == 0
    err = capsys.readouterr().err
    check = json.loads((tmp_path / "run.json").read_text())["holdout"]
    assert f"napari-treg: {check['verdict']}" in err and check["verdict"].startswith("held-out check: ")
    uncorrected = io.read_image(tmp_path / "cells_filled.uncorrected_std.tif")
    std = io.read_image(tmp_path / "cells_filled.std.tif")
    assert uncorrected.shape == std.shape == (16, 16, 3)
    assert check["corrected"]  # 3 steps: the sampler's spread is too narrow, and the check says so
    np.testing.assert_allclose(std[missing], check["factor"] * uncorrected[missing], rtol=1e-3, atol=1e-6)
    # refused before any work, nothing written: --holdout without --samples, too few samples, 0.5 or more
    for bad in (["--holdout", "0.1"], ["--samples", "3", "--holdout", "0.1"], ["--samples", "4", "--holdout", "0.5"]):
        assert main([*common, "-o", str(tmp_path / "bad.tif"), *bad, "-q"]) == 2
    assert not list(tmp_path.glob("bad*"))
    err = capsys.readouterr().err
    assert "--holdout need --samples" in err and "at least 4 samples" in err and "exclusive" in err
