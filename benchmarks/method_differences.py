"""What each difference from the authors' code costs: napari-treg's choice against the authors' (CPU).

For every row of the differences table in docs/method.md, runs TReg twice with the same inputs
and noise, once as napari-treg does it and once with that one choice as in the authors' code
(TReg-inverse/TReg, ``solver/latent_diffusion.py``), and reports

- on the tiny random-weight SD prior (64x64, SR x4, 200 steps, one seed): the largest and the RMS
  difference of the final images (in [-1, 1]), and for adaptive negation of the null embeddings;
- on the exact analytic prior, where the choice acts there: the residual in noise units on SR x4
  and box inpainting (true-class prompt) and the fraction of restorations that follow a prompt of
  the other class on SR x16 / hidden-object inpainting (``benchmarks/fidelity.py``'s measures).

    python benchmarks/method_differences.py            # ~5 min on one thread

The authors' variants are written here, for measuring only; the package has none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import torch
import torch.nn.functional as F

from napari_treg.models.analytic import AnalyticPrior, template
from napari_treg.operators import SuperResolution
from napari_treg.solver import AdaptiveNegation, TRegSettings, sampler, treg_sample
from napari_treg.solver.timesteps import Step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import NOISE, prompt_choice, residuals  # noqa: E402

SIZE = 64
STEPS = 200


# -- the authors' choices, one at a time ------------------------------------------------------------


class PersistentAdamNegation(AdaptiveNegation):
    """One Adam state (moments, step count) kept across all DC steps: napari-treg before issue 13."""

    def __init__(self, null: torch.Tensor, lr: float, steps: int):
        super().__init__(null, lr, steps)
        self.count = 0
        self.m = torch.zeros_like(self.null[:, :1])
        self.v = torch.zeros_like(self.null[:, :1])

    def update(self, image_embedding: torch.Tensor) -> torch.Tensor:
        grad = (image_embedding.detach().float() / self.null.shape[1])[:, None, :]
        for _ in range(self.steps):
            self.count += 1
            self.m = 0.9 * self.m + 0.1 * grad
            self.v = 0.999 * self.v + 0.001 * grad * grad
            m_hat, v_hat = self.m / (1 - 0.9**self.count), self.v / (1 - 0.999**self.count)
            self.null -= self.lr * m_hat / (v_hat.sqrt() + 1e-8)
        return self.null


def shifted_alphas(ddim_steps: Callable) -> Callable:
    """The authors' alphas: 1.0 prepended to alphas_cumprod, so step t uses abar[t - 1]."""

    def steps(schedule, count, dc_every, dc_until):
        abar = schedule.alphas_cumprod
        shifted = torch.cat([torch.ones(1, dtype=abar.dtype), abar])
        ratio = schedule.num_train_timesteps // count
        out = []
        for s in ddim_steps(schedule, count, dc_every, dc_until):
            prev = s.t - ratio
            a_prev = float(shifted[prev]) if prev >= 0 else float(abar[0])
            out.append(Step(s.index, s.t, float(shifted[s.t]), a_prev, s.data_consistency))
        return out

    return steps


def null_only_at_w1(guide: Callable) -> Callable:
    """The authors' CFG: at w = 1 the null-text prediction alone."""

    def guided(eps_u, eps_c, guidance):
        if guidance == 1:
            return eps_u
        return guide(eps_u, eps_c, guidance)

    return guided


def authors_clip_pixels(prior) -> Callable:
    """The authors' CLIP preprocessing: bicubic, align_corners=True, no antialias, no clamp."""

    def pixels(x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(prior.image_size,) * 2, mode="bicubic", align_corners=True)
        mean = torch.tensor(prior.image_mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(prior.image_std, device=x.device).view(1, -1, 1, 1)
        return ((x + 1) / 2 - mean) / std

    return pixels


def sampled_encode(prior) -> Callable:
    """The authors' VAE encode: a sample of the posterior, not its mean."""
    generator = torch.Generator().manual_seed(1234)

    def encode(x: torch.Tensor) -> torch.Tensor:
        dist = prior.vae.encode(x.to(prior.device, prior.dtype)).latent_dist
        return (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)) * prior.scaling_factor

    return encode


@contextlib.contextmanager
def variant(name: str, prior) -> Iterator[None]:
    """Patch in the authors' choice ``name`` (the project's own if ``name`` is None)."""
    patches = {
        "negation": [mock.patch.object(sampler, "AdaptiveNegation", PersistentAdamNegation)],
        "alphas": [mock.patch.object(sampler, "ddim_steps", shifted_alphas(sampler.ddim_steps))],
        "cfg_w1": [mock.patch.object(sampler, "guide", null_only_at_w1(sampler.guide))],
        "clip": [mock.patch.object(prior, "clip_pixels", authors_clip_pixels(prior))] if hasattr(prior, "vae") else [],
        "vae_sample": [mock.patch.object(prior, "encode", sampled_encode(prior))] if hasattr(prior, "vae") else [],
    }.get(name, [])
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


# -- the rows ------------------------------------------------------------------------------------------

#: row -> (the authors' choice patched in, napari-treg's settings, the authors' settings)
ROWS: dict[str, tuple[str | None, dict, dict]] = {
    "adaptive negation: fresh Adam (both) vs one Adam state (napari-treg before)": ("negation", {}, {}),
    "alphas: abar[t] vs abar[t-1]": ("alphas", {}, {}),
    "CLIP preprocessing": ("clip", {}, {}),
    "CFG at w = 1": ("cfg_w1", {"guidance": 1.0}, {"guidance": 1.0}),
    "DC schedule at 50 steps: i < 0.85 steps vs i < 170": (None, {"steps": 50}, {"steps": 50, "dc_until": 1.0}),
    "VAE encode: mean vs sample": ("vae_sample", {}, {}),
    "final clamp to [-1, 1]": ("clamp", {}, {}),
    "CFG scale 7.5 (paper) vs 5.0 (README)": (None, {"guidance": 7.5}, {"guidance": 5.0}),
}
#: rows that change nothing on the analytic prior (no CLIP resize, identity autoencoder)
TINY_ONLY = {"CLIP preprocessing", "VAE encode: mean vs sample"}


def finish(name: str | None, x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-1, 1) if name == "clamp" else x


class Recorded:
    """The last AdaptiveNegation a run made (to compare null embeddings)."""

    last: AdaptiveNegation | None = None


def recording(cls: type) -> type:
    class Recording(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            Recorded.last = self

    return Recording


def tiny_run(prior, name: str | None, settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One 64x64 SR x4 solve of a disk on the tiny prior; the image and the final null embedding."""
    op = SuperResolution(4)
    x = torch.from_numpy(2 * template("disk", (3, SIZE, SIZE)) - 1)[None]
    y = op(x) + NOISE * torch.randn(op(x).shape, generator=torch.Generator().manual_seed(1))
    text, null = prior.embed_text(["a photo of a disk"]), prior.embed_text(["out of focus, depth of field"])
    config = replace(TRegSettings(), **settings)
    with variant(name, prior):
        with mock.patch.object(sampler, "AdaptiveNegation", recording(sampler.AdaptiveNegation)):
            out = treg_sample(
                prior,
                y,
                op,
                (SIZE, SIZE),
                text=text,
                null=null,
                config=config,
                generators=[torch.Generator().manual_seed(0)],
            )
    return finish(name, out), Recorded.last.null.clone()


def analytic_scores(name: str | None, settings: dict, args) -> dict[str, float]:
    """(a) residuals and (b) prompt choice on the analytic prior with ``name`` patched in."""
    import fidelity

    prior = AnalyticPrior()
    config = replace(TRegSettings(), **settings)
    restore = fidelity.restore
    clamped = mock.patch.object(fidelity, "restore", lambda *a, **k: restore(*a, **k).clamp(-1, 1))
    with variant(name, prior), clamped if name == "clamp" else contextlib.nullcontext():
        a = residuals(prior, config, SIZE, args.seeds)
        b = prompt_choice(prior, config, 32, args.ambiguous_seeds)
    return {"SR x4": a["SR x4"], "inpaint": a["inpaint"], "SR x16": b["SR x16"], "hidden": b["hidden"]}


def difference(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a - b).abs()
    return f"{float(d.max()):.3f} / {float(d.square().mean().sqrt()):.3f}"


def clip_input_difference(prior) -> str:
    """Largest per-pixel difference of the two CLIP preprocessings of a 512x512 photograph (skimage astronaut)."""
    from skimage.data import astronaut

    x = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    prior_224 = mock.Mock(image_size=224, image_mean=prior.image_mean, image_std=prior.image_std)
    ours = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).add(1).div(2).clamp(0, 1)
    theirs = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True).add(1).div(2)
    std = float(torch.tensor(prior_224.image_std).mean())
    d = (ours - theirs).abs()
    return f"512->224, astronaut: max {float(d.max()):.2f}, RMS {float(d.square().mean().sqrt()):.3f} in [0, 1] units (÷ CLIP std ≈ {std:.2f} for the tower's input)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--ambiguous-seeds", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_treg.models.tiny import build_tiny_prior

    started = time.perf_counter()
    tiny = build_tiny_prior()
    baseline_tiny = {}
    lines = [
        "| difference | tiny prior: image max / RMS (null max) | analytic: napari-treg | analytic: authors |",
        "|---|---|---|---|",
    ]
    analytic_cache: dict[str, dict] = {}
    for row, (name, ours, theirs) in ROWS.items():
        key = repr(sorted(ours.items()))
        if key not in baseline_tiny:
            baseline_tiny[key] = tiny_run(tiny, None, ours)
        image_ours, null_ours = baseline_tiny[key]
        image_theirs, null_theirs = tiny_run(tiny, name, theirs)
        tiny_cell = difference(image_ours, image_theirs)
        if name == "negation":
            tiny_cell += f" (null {float((null_ours - null_theirs).abs().max()):.3f})"
        if row in TINY_ONLY:
            cells = ["(no effect: identity autoencoder, no resize)"] * 2
        else:
            if key not in analytic_cache:
                analytic_cache[key] = analytic_scores(None, ours, args)
            cells = [format_scores(analytic_cache[key]), format_scores(analytic_scores(name, theirs, args))]
        lines.append(f"| {row} | {tiny_cell} | {cells[0]} | {cells[1]} |")
        print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    print()
    print("CLIP input difference:", clip_input_difference(tiny))
    print(
        f"python benchmarks/method_differences.py {' '.join(sys.argv[1:])}: {platform.platform()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {time.perf_counter() - started:.0f} s"
    )
    return 0


def format_scores(s: dict[str, float]) -> str:
    return (
        f"residual SR x4 {s['SR x4']:.2f}, inpaint {s['inpaint']:.2f}; "
        f"prompt followed SR x16 {s['SR x16']:.0%}, hidden {s['hidden']:.0%}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
