"""What the widgets offer besides operators and method settings: models, devices, precisions (no Qt here).

The operators and the method's settings come from the engine's registries
(:mod:`napari_treg.operators.registry`, :class:`napari_treg.solver.TRegSettings`), see :mod:`.forms`;
what an operator does to the image size is the operator's own (``LinearOperator.upscale``).
"""

from __future__ import annotations

from napari_treg.errors import InvalidInputError
from napari_treg.models.devices import DTYPE_CHOICES
from napari_treg.models.loading import MODEL_NAMES

# -- models, devices, precisions ------------------------------------------------------------

#: how the widget shows the named models of :func:`napari_treg.models.load_model`
MODEL_LABELS = {
    "sd15": "Stable Diffusion 1.5 (Hugging Face hub)",
    "tiny": "Tiny test model (random weights: no meaningful image)",
    "analytic": "Analytic test prior (exact; shapes only: disk, square)",
}
#: named models whose text encoder has random weights: a prompt means nothing to them
RANDOM_TEXT_MODELS = frozenset({"tiny"})
#: a model given by path, with the kind of path the widget asks for
PATH_MODELS = {
    "folder": "Stable Diffusion 1.x, local diffusers folder",
    "checkpoint": "Stable Diffusion 1.x, checkpoint file",
}
MODELS: tuple[tuple[str, str], ...] = (
    (MODEL_LABELS.get(MODEL_NAMES[0], MODEL_NAMES[0]), MODEL_NAMES[0]),
    *((label, key) for key, label in PATH_MODELS.items()),
    *((MODEL_LABELS.get(name, name), name) for name in MODEL_NAMES[1:]),
)
PRECISIONS: tuple[tuple[str, str | None], ...] = (
    ("auto (float16 on GPU)", None),
    *((name, name) for name in DTYPE_CHOICES),
)
#: why the widget does not offer float16 on the CPU (measured: benchmarks/cpu_precision.py)
CPU_FLOAT16_REASON = (
    "float16 is not offered on the CPU: torch runs its convolutions there in a slow generic kernel "
    "(3.8 and 6.4 x the time of float32 for the tiny model at 64x64 and 128x128) and a CPU gains nothing "
    "from half the memory; use float32 or bfloat16 there, float16 on a GPU"
)


def runs_on_cpu(device: str) -> bool:
    """Whether the device choice (``auto`` included) runs on the CPU here."""
    from napari_treg.models.devices import resolve_device

    try:
        return resolve_device(device).type == "cpu"
    except InvalidInputError:  # a device that is not here: refused with its own message when the run starts
        return False


def precisions_for(device: str) -> list[tuple[str, str | None]]:
    """The precisions the widget offers on ``device``: all of :data:`PRECISIONS`, without float16 on the CPU."""
    if runs_on_cpu(device):
        return [choice for choice in PRECISIONS if choice[1] != "float16"]
    return list(PRECISIONS)


def check_precision(device: str, dtype: str | None) -> None:
    """Refuse a precision the widget does not offer on ``device``: float16 on the CPU (:data:`CPU_FLOAT16_REASON`)."""
    if dtype not in {value for _, value in precisions_for(device)}:
        raise InvalidInputError(CPU_FLOAT16_REASON)


def model_spec(choice: str, path: str | None = None) -> str:
    """The ``model`` argument of ``restore``/``load_model`` for a model choice and path."""
    if choice in MODEL_NAMES:
        return choice
    if choice in PATH_MODELS:
        text = str(path or "").strip()
        if not text or text == ".":
            what = "a diffusers folder" if choice == "folder" else "a .safetensors or .ckpt file"
            raise InvalidInputError(f"choose the model path: {what}")
        return text
    # a hub id, path or name typed from the console
    return str(choice)


def available_devices() -> list[str]:
    """Devices that exist here: auto, cpu, every CUDA GPU, and Apple MPS."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices
