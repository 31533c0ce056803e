"""The text-conflict check against the number of steps, through ``napari_treg.restore`` on the analytic prior.

One restore per cell: a disk (``template("disk")``) measured with GaussianBlur(1.5) and noise 0.01 (seed 0),
prompts 'a square' (the data rule it out) and 'a disk' (matching), and SR x16 (the data leave the class open)
with 'a square'; the noise level is given. Prints ``info["text_conflict"]["deficit_nats"]`` (FLAG: flagged) or
why the run was not checked (docs/method.md, "Which steps are read").

    .venv/bin/python benchmarks/conflict_steps.py              # 32x32, about 1-3 min on one core
    .venv/bin/python benchmarks/conflict_steps.py --size 64 --steps 12 30 200
"""

from __future__ import annotations

import argparse

import napari_treg
from napari_treg.models.analytic import template
from napari_treg.operators import GaussianBlur, SuperResolution

CASES = [("blur 1.5", GaussianBlur(1.5), "a square"), ("blur 1.5", GaussianBlur(1.5), "a disk")]
CASES += [("SR x16", SuperResolution(16), "a square")]


def cell(size: int, op, prompt: str, steps: int | None) -> str:
    y = napari_treg.degrade(template("disk", (size, size)), op, noise=0.01, seed=0)
    given = {} if steps is None else {"steps": steps}
    _, info = napari_treg.restore(
        y, op, prompt=prompt, model="analytic", noise=0.01, intensity_range=(0, 1), return_info=True, **given
    )
    found = info["text_conflict"]
    if not found["checked"]:
        return f"unchecked: {found['reason']}"
    return f"{found['deficit_nats']:.0f}{' FLAG' if found['flag'] else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4, 8, 12, 20, 30, 50, 100, 200])
    args = parser.parse_args(argv)
    print("| steps | " + " | ".join(f"{name}, {prompt!r}" for name, _, prompt in CASES) + " |")
    for steps in [*args.steps, None]:
        cells = [cell(args.size, op, prompt, steps) for _, op, prompt in CASES]
        print(f"| {steps or 'default'} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
