"""Stable Diffusion 1.x as a :class:`~napari_treg.models.base.DiffusionPrior`.

Wraps the diffusers / transformers components: the UNet, the VAE, the CLIP text
tower with its tokenizer and a CLIP image tower (with projection) for adaptive
negation. :func:`~napari_treg.models.load_model` builds it (:mod:`napari_treg.models.files`);
this module only runs the models. The sampler keeps its state in float32; every method here casts
its inputs to the model's dtype and returns float32.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

from napari_treg.errors import InvalidInputError
from napari_treg.memory import free_accelerator_memory
from napari_treg.models.base import DiffusionPrior, NoiseSchedule
from napari_treg.models.cuda_graphs import GraphCache
from napari_treg.operators.base import DeviceCopies

if TYPE_CHECKING:  # heavy imports only for type checkers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

#: OpenAI CLIP preprocessing constants (also in the image processor config of CLIP ViT-L/14)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class StableDiffusionPrior(DiffusionPrior):
    """Stable Diffusion (epsilon prediction, 4-channel latent, x8 VAE) plus a CLIP image tower.

    Parameters
    ----------
    unet, vae, text_encoder, tokenizer, image_encoder
        The diffusers / transformers components, already on one device and dtype; they are
        put in eval mode and frozen (``requires_grad=False``).
    schedule
        Training noise schedule; SD 1.5's ``scaled_linear`` one by default.
    image_size, image_mean, image_std
        What the image tower expects; the size defaults to its config's ``image_size``.
    name
        Human-readable id (hub id or path), stored in result metadata.
    is_test_model
        True for random-weight models that produce no meaningful image.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        image_encoder: CLIPVisionModelWithProjection,
        *,
        schedule: NoiseSchedule | None = None,
        image_size: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        name: str = "stable-diffusion",
        is_test_model: bool = False,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.schedule = schedule if schedule is not None else NoiseSchedule.scaled_linear()
        self.image_size = int(image_size or image_encoder.config.image_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.name = name
        self.is_test_model = is_test_model
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.low_memory = False
        self.compiled = False
        #: replay the UNet, VAE and CLIP image calls from CUDA graphs on CUDA (see cuda_graphs.py)
        self.cuda_graphs = True
        self.graphs = GraphCache()
        self._clip_mean = DeviceCopies(torch.tensor(self.image_mean).view(1, -1, 1, 1))
        self._clip_std = DeviceCopies(torch.tensor(self.image_std).view(1, -1, 1, 1))
        self.max_tokens = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
        _check_compatible(text_encoder, image_encoder, unet, vae)
        for module in self._modules():
            module.eval()
            module.requires_grad_(False)
        # one image of a batch at a time through the VAE: its activations at 512x512 dwarf the
        # UNet's, and a batch gains nothing there (the VAE is compute-bound)
        vae.enable_slicing()
        param = next(unet.parameters())
        self.device = param.device
        self.dtype = param.dtype

    # -- geometry ---------------------------------------------------------------------------

    @property
    def downscale(self) -> int:
        """How much smaller than the image the latent is (8 for SD's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        return self.downscale

    def latent_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        h, w = image_hw
        return (int(self.unet.config.in_channels), h // self.downscale, w // self.downscale)

    # -- autoencoder ------------------------------------------------------------------------
    # encode / decode / predict_noise follow the caller's grad mode: the weights are frozen,
    # so no graph is built unless an input requires grad (for gradient-based baselines).

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] -> scaled posterior mean ``(B, 4, H/8, W/8)``."""
        return self._call("encode", self._encode, self._cast(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image ``(B, 3, H, W)`` in [-1, 1] (not clipped)."""
        return self._call("decode", self._decode, self._cast(z))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(x).latent_dist.mean * self.scaling_factor).float()

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor).sample.float()

    # -- denoiser ---------------------------------------------------------------------------

    def predict_noise(self, z: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        """UNet noise prediction; a single ``text`` row is shared by the whole batch."""
        if text.shape[0] == 1 and z.shape[0] > 1:
            text = text.expand(z.shape[0], *text.shape[1:])
        timestep = torch.full((), int(t), dtype=torch.int64, device=self.device)  # no host-to-device copy
        return self._call("unet", self._predict_noise, self._cast(z), timestep, self._cast(text))

    def _predict_noise(self, z: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(z, timestep, encoder_hidden_states=text).sample.float()

    # -- CLIP -------------------------------------------------------------------------------

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> last hidden states ``(B, 77, width)`` (float32), padded to the max length.

        Prompts longer than the tokenizer's limit are truncated, with a warning.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        _warn_if_truncated(self.tokenizer, prompts, self.max_tokens)
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        )
        text_device = next(self.text_encoder.parameters()).device
        hidden = self.text_encoder(tokens.input_ids.to(text_device))[0]
        return hidden.float().to(self.device)

    @torch.no_grad()
    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] -> unit-length projected CLIP embedding (float32)."""
        return self._call("clip_image", self._embed_image, x.to(self.device, torch.float32))

    def _embed_image(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.image_encoder(pixel_values=self._cast(self.clip_pixels(x))).image_embeds
        return F.normalize(embeds.float(), dim=-1)

    def clip_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The image tower's input: resize (bicubic, antialiased) to its size, map to [0, 1], clamp, normalise.

        Like CLIP's own preprocessing (a PIL bicubic resize, which antialiases, of an image in [0, 1]);
        the authors' code resizes without antialiasing and does not clamp (docs/method.md).
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = (self.image_size, self.image_size)
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = ((x + 1) / 2).clamp(0, 1)
        return (x - self._clip_mean.like(x)) / self._clip_std.like(x)  # copied to the GPU once

    # -- model calls ------------------------------------------------------------------------

    def _call(self, name: str, fn, *inputs: torch.Tensor) -> torch.Tensor:
        """``fn(*inputs)``, from a CUDA graph when it can be: CUDA, no autograd, not compiled."""
        if self.cuda_graphs and self.device.type == "cuda" and not self.compiled and not torch.is_grad_enabled():
            return self.graphs.run(name, fn, *inputs)
        return fn(*inputs)

    # -- device handling --------------------------------------------------------------------

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StableDiffusionPrior:
        """Move every component to ``device`` / ``dtype`` (in place); returns self.

        In low-memory mode the text encoder stays on the CPU in float32.
        """
        # torch's own Module.to: diffusers' override only adds a warning that fires on every
        # dtype cast ("modules that should be kept in float32: []") for these unquantized models
        for module in self._modules():
            if module is self.text_encoder and self.low_memory:
                torch.nn.Module.to(module, device="cpu", dtype=torch.float32)
            else:
                torch.nn.Module.to(module, device=device, dtype=dtype)
        param = next(self.unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.graphs.clear()  # recorded graphs point at the old weights
        return self

    def release(self) -> None:
        """Move the weights to the CPU and free the accelerator's cached memory."""
        on_accelerator = self.device.type != "cpu"
        self.to("cpu")
        if on_accelerator:
            free_accelerator_memory()

    # -- speed and memory -------------------------------------------------------------------

    def set_low_memory(self, enabled: bool = True) -> StableDiffusionPrior:
        """Trade speed for memory (for GPUs with 8 GB or less); returns self.

        - VAE tiling: images over 512 pixels are decoded / encoded in overlapping tiles,
        - the text encoder kept on the CPU in float32 (it runs twice per restore).

        Attention stays scaled-dot-product: its memory grows linearly with the image, and with
        diffusers' sliced attention instead, 1024x1024 ran out of memory on an 8 GiB GPU
        profile where it now runs (docs/performance.md). The VAE always works one image of a
        batch at a time (slicing), in both modes.
        """
        enabled = bool(enabled)
        if enabled:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()
        self.low_memory = enabled
        self.graphs.clear()  # recorded with the other VAE code path
        self.text_encoder.to(device="cpu" if enabled else self.device, dtype=torch.float32 if enabled else self.dtype)
        if enabled and self.device.type != "cpu":
            free_accelerator_memory()
        return self

    def compile(self, mode: str | None = None) -> StableDiffusionPrior:
        """``torch.compile`` the UNet, the VAE and the image tower in place; returns self.

        ``mode`` defaults to ``"reduce-overhead"`` on CUDA (CUDA graphs: the solve is
        launch-bound) and to torch's default elsewhere. The first solve at a new image
        size pays the compilation (tens of seconds on a GPU; cached by inductor on disk
        for later processes); shapes are static per image size (``dynamic=False``).
        """
        if mode is None and self.device.type == "cuda":
            mode = "reduce-overhead"
        for module in (self.unet, self.vae.encoder, self.vae.decoder, self.image_encoder):
            module.compile(mode=mode, dynamic=False)
        self.compiled = True  # torch.compile's own CUDA graphs replace ours
        self.graphs.clear()
        return self

    def _modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, self.text_encoder, self.image_encoder]

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, self.dtype)

    def __repr__(self) -> str:
        return f"StableDiffusionPrior(name={self.name!r}, device={self.device}, dtype={self.dtype})"


def schedule_from_config(config: dict[str, Any]) -> NoiseSchedule:
    """The training noise schedule described by a diffusers scheduler config."""
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise InvalidInputError(
            f"this model predicts {prediction!r}, but TReg needs an epsilon-prediction model "
            "(Stable Diffusion 1.x); choose an SD 1.x model"
        )
    kind = config.get("beta_schedule", "scaled_linear")
    start = float(config.get("beta_start", 0.00085))
    end = float(config.get("beta_end", 0.012))
    steps = int(config.get("num_train_timesteps", 1000))
    if kind == "scaled_linear":
        return NoiseSchedule.scaled_linear(start, end, steps)
    if kind == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
        return NoiseSchedule(torch.cumprod(1.0 - betas, dim=0))
    raise InvalidInputError(f"unsupported beta_schedule {kind!r} in the scheduler config (use scaled_linear or linear)")


def _check_compatible(text_encoder: Any, image_encoder: Any, unet: Any, vae: Any) -> None:
    """One latent layout for UNet and VAE; one width for text states and image embeddings.

    Adaptive negation compares image embeddings with text token rows, so their widths must agree.
    """
    channels = (int(unet.config.in_channels), int(unet.config.out_channels), int(vae.config.latent_channels))
    if len(set(channels)) != 1:
        raise InvalidInputError(
            f"UNet in/out channels {channels[0]}/{channels[1]} do not match the VAE's {channels[2]} latent "
            "channels: inpainting, depth or other conditioned UNets are not supported"
        )
    text_width = int(text_encoder.config.hidden_size)
    image_width = int(image_encoder.config.projection_dim)
    cross = int(unet.config.cross_attention_dim)
    if not text_width == image_width == cross:
        raise InvalidInputError(
            f"model widths do not match: text encoder {text_width}, image embedding {image_width}, "
            f"UNet cross-attention {cross}; TReg needs one width (SD 1.x with CLIP ViT-L/14: 768)"
        )


def _warn_if_truncated(tokenizer: Any, prompts: list[str], max_tokens: int) -> None:
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False, verbose=False).input_ids]
    for prompt, length in zip(prompts, lengths):
        if length > max_tokens:
            dropped = length - max_tokens
            warnings.warn(
                f"prompt is longer than the text encoder's {max_tokens} tokens: the last {dropped} "
                f"token(s) were dropped (prompt starts {prompt[:40]!r})",
                UserWarning,
                stacklevel=4,  # the caller of embed_text (past its no_grad wrapper)
            )
