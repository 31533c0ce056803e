"""The paper's evaluation protocol on Stable Diffusion 1.5 (for users with the weights and a GPU).

x16 bicubic super-resolution and Gaussian deblurring (61 px kernel, sigma 5 at 512 px; scaled
with ``--size``) at measurement noise 0.01 on [-1, 1], restored by TReg, TReg without text
(w = 0) and PSLD, with the true prompt of each image and with another image's prompt.
Scores: PSNR against the ground truth, LPIPS (when the ``lpips`` package works), CLIP
similarity of the restoration to the prompt used, and y-MSE ``mean (A x - y)^2``.

    python benchmarks/sd_protocol.py                       # SD 1.5, 512 px, 200 steps, GPU
    python benchmarks/sd_protocol.py --images DIR          # your images; prompts from prompts.txt
    python benchmarks/sd_protocol.py --model tiny --size 64 --steps 4 --clip tiny   # a smoke run

``--images DIR`` reads every image in DIR; ``DIR/prompts.txt`` holds ``file<TAB>prompt`` lines
(default prompt: "a photo of a <file stem>"). Without it, four images bundled with
scikit-image are used (cat, coffee, astronaut, rocket).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_treg.models import load_model
from napari_treg.operators import GaussianBlur, LinearOperator, SuperResolution
from napari_treg.solver import TRegSettings, get_method

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BUILTIN = {
    "chelsea": "a photo of a cat",
    "coffee": "a photo of a cup of coffee",
    "astronaut": "a photo of an astronaut",
    "rocket": "a photo of a rocket",
}


# -- data -------------------------------------------------------------------------------------------


def square_crop_resize(image: np.ndarray, size: int) -> torch.Tensor:
    """Centre square crop, anti-aliased resize, RGB, to ``(3, size, size)`` in [-1, 1]."""
    from skimage.transform import resize
    from skimage.util import img_as_float

    image = img_as_float(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = resize(image[top : top + side, left : left + side], (size, size), anti_aliasing=True)
    return torch.from_numpy(np.moveaxis(image, -1, 0).astype(np.float32)) * 2 - 1


def load_images(folder: Path | None, size: int, limit: int | None) -> list[tuple[str, torch.Tensor, str]]:
    """``(name, image, prompt)`` for the images of ``folder``, or the built-in ones."""
    if folder is None:
        import skimage.data

        items = [(name, getattr(skimage.data, name)(), prompt) for name, prompt in BUILTIN.items()]
    else:
        from napari_treg.io.files import read_image

        prompts = {}
        listing = folder / "prompts.txt"
        if listing.exists():
            for line in listing.read_text().splitlines():
                if "\t" in line:
                    file, prompt = line.split("\t", 1)
                    prompts[file.strip()] = prompt.strip()
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))
        items = [(p.stem, read_image(p), prompts.get(p.name, f"a photo of a {p.stem}")) for p in files]
    items = items[:limit] if limit else items
    return [(name, square_crop_resize(image, size), prompt) for name, image, prompt in items]


def tasks(size: int) -> dict[str, LinearOperator]:
    """The paper's operators, with the blur scaled from its 512 px setting."""
    sigma = 5.0 * size / 512
    kernel = 2 * round(30 * size / 512) + 1
    return {"SR x16": SuperResolution(16), "Gaussian deblur": GaussianBlur(sigma, size=max(kernel, 3))}


@dataclass(frozen=True)
class Method:
    label: str
    name: str
    config: TRegSettings


def methods(steps: int, chosen: list[str]) -> list[Method]:
    base = TRegSettings(steps=steps)
    every = {
        "treg": Method("TReg", "treg", base),
        "treg-w0": Method("TReg w=0", "treg", replace(base, guidance=0.0)),
        "treg-no-negation": Method("TReg, no negation", "treg", replace(base, adaptive_negation=False)),
        "psld": Method("PSLD", "psld", base),
        "tikhonov": Method("Tikhonov", "tikhonov", base),
    }
    return [every[name] for name in chosen]


# -- scores -----------------------------------------------------------------------------------------


class ClipScorer:
    """Cosine similarity of projected CLIP image and text embeddings."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.size = int(model.config.vision_config.image_size)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = F.interpolate(
            x.float().to(self.device), size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
        )
        pixels = ((pixels + 1) / 2).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            max_length=self.tokenizer.model_max_length,
        )
        image = self.model.get_image_features(pixel_values=(pixels - mean) / std)
        text = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device))
        image, text = _features(image), _features(text)
        return F.cosine_similarity(image, text, dim=-1).cpu()


def _features(output) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor, or an output object in newer transformers)."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, key, None)
        if value is not None:
            return value
    raise TypeError(f"cannot read CLIP features from {type(output).__name__}")


def load_clip(spec: str, device: torch.device) -> ClipScorer | None:
    """A CLIP scorer: ``none``, ``tiny`` (random weights, offline) or a hub id / folder."""
    if spec == "none":
        return None
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    if spec == "tiny":
        from napari_treg.models.tiny import byte_level_tokenizer

        tokenizer = byte_level_tokenizer()
        vocab = tokenizer.get_vocab()
        eos = vocab["<|endoftext|>"]
        text = dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=eos,
            pad_token_id=eos,
        )
        vision = dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
        torch.manual_seed(0)
        return ClipScorer(
            CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)), tokenizer, device
        )
    try:
        return ClipScorer(CLIPModel.from_pretrained(spec), CLIPTokenizer.from_pretrained(spec), device)
    except Exception as error:  # noqa: BLE001 - a missing scorer must not stop the benchmark
        print(
            f"CLIP similarity unavailable ({type(error).__name__}: {error}); pass --clip none to silence",
            file=sys.stderr,
        )
        return None


def load_lpips(device: torch.device):
    """LPIPS (AlexNet) when the ``lpips`` package and its weights work here, else None."""
    try:
        import lpips

        return lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception:  # noqa: BLE001 - optional; needs torchvision and downloaded weights
        return None


def psnr(x: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (clipped), on the [0, 1] scale."""
    mse = (((x.clamp(-1, 1) - truth) / 2) ** 2).mean()
    return float(10 * torch.log10(1 / mse))


# -- the run ----------------------------------------------------------------------------------------


def restore(
    prior, method: Method, op, y: torch.Tensor, size: int, prompt: str, seed: int
) -> tuple[torch.Tensor, float]:
    text, null = prior.embed_text([prompt]), prior.embed_text([""])
    started = time.perf_counter()
    x = get_method(method.name)(
        prior,
        y.to(prior.device),
        op,
        (size, size),
        text=text,
        null=null,
        config=method.config,
        generators=[torch.Generator().manual_seed(seed)],
    )
    if prior.device.type == "cuda":
        torch.cuda.synchronize()
    return x.detach().float().cpu(), time.perf_counter() - started


def evaluate(args: argparse.Namespace) -> list[dict]:
    prior = load_model(args.model, device=args.device, dtype=args.dtype)
    clip = load_clip(args.clip, prior.device)
    lpips_net = load_lpips(prior.device)
    images = load_images(args.images, args.size, args.limit)
    rows = []
    for index, (name, truth, prompt) in enumerate(images):
        other = images[(index + 1) % len(images)][2] if len(images) > 1 else "a photo"
        for task, op in tasks(args.size).items():
            ax = op(truth[None])
            y = ax + args.noise * torch.randn(ax.shape, generator=torch.Generator().manual_seed(args.seed))
            for method in methods(args.steps, args.methods):
                for kind, used in (("true", prompt), ("other", other)):
                    if kind == "other" and method.config.guidance == 0 and method.name == "treg":
                        continue  # no text: the prompt does not matter
                    x, seconds = restore(prior, method, op, y, args.size, used, args.seed)
                    rows.append(
                        {
                            "image": name,
                            "task": task,
                            "method": method.label,
                            "prompt": kind,
                            "text": used,
                            "psnr": psnr(x, truth[None]),
                            "lpips": _lpips(lpips_net, x, truth[None], prior.device),
                            "clip": float(clip(x, [used])[0]) if clip is not None else None,
                            "y_mse": float(((op(x) - y) ** 2).mean()),
                            "seconds": seconds,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def _lpips(net, x: torch.Tensor, truth: torch.Tensor, device) -> float | None:
    if net is None:
        return None
    with torch.no_grad():
        return float(net(x.clamp(-1, 1).to(device), truth.to(device)).mean())


def summary(rows: list[dict], args: argparse.Namespace, model_name: str) -> str:
    """Markdown: mean scores per task, method and prompt kind."""

    def fmt(values, digits):
        values = [v for v in values if v is not None]
        return f"{np.mean(values):.{digits}f}" if values else "n/a"

    lines = [
        f"# TReg protocol: {model_name}",
        "",
        f"Command: `python benchmarks/sd_protocol.py {' '.join(sys.argv[1:])}`; {args.size} px, {args.steps} steps, "
        f"noise {args.noise}, {len({r['image'] for r in rows})} image(s), seed {args.seed}.",
        "",
        "| task | method | prompt | PSNR (dB) | LPIPS | CLIP sim. | y-MSE | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["task"], r["method"], r["prompt"]) for r in rows}, key=lambda k: (k[0], k[1], k[2] != "true"))
    for task, method, kind in keys:
        group = [r for r in rows if (r["task"], r["method"], r["prompt"]) == (task, method, kind)]
        lines.append(
            f"| {task} | {method} | {kind} | {fmt([r['psnr'] for r in group], 2)} | "
            f"{fmt([r['lpips'] for r in group], 3)} | {fmt([r['clip'] for r in group], 3)} | "
            f"{fmt([r['y_mse'] for r in group], 2 + 4)} | {fmt([r['seconds'] for r in group], 1)} |"
        )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sd15", help="sd15 (default), tiny, a hub id, folder or checkpoint")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["treg", "treg-w0", "psld"],
        choices=["treg", "treg-w0", "treg-no-negation", "psld", "tikhonov"],
    )
    parser.add_argument("--clip", default="openai/clip-vit-large-patch14", help="hub id / folder, tiny, or none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown summary here")
    parser.add_argument("--json", type=Path, default=None, help="write every row as JSON here")
    args = parser.parse_args(argv)
    if args.size % 16:
        parser.error("--size must be a multiple of 16 (x16 super-resolution)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = evaluate(args)
    text = summary(rows, args, str(args.model))
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(math.isfinite(r["psnr"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
