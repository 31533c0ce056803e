"""A tiny Stable-Diffusion-shaped model with random weights, built offline, for tests.

Same architecture family and shapes as SD 1.5 (4-channel latent, x8 VAE, 77-token
CLIP text states, projected CLIP image embedding of the same width), only very
small: it builds in milliseconds and runs on a CPU. It produces no meaningful image.
"""

from __future__ import annotations

import torch

from napari_treg.models.base import NoiseSchedule
from napari_treg.models.stable_diffusion import StableDiffusionPrior

TINY_NAME = "tiny (random weights, test model: produces no meaningful image)"
WIDTH = 32  # text hidden size = image projection = UNet cross-attention width
MAX_TOKENS = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tiny_prior(seed: int = 0) -> StableDiffusionPrior:
    """A random-weight tiny SD prior on the CPU in float32; the same seed gives the same weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = byte_level_tokenizer()
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=WIDTH,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(_text_config(CLIPTextConfig, tokenizer))
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                image_size=32,
                patch_size=8,
                hidden_size=WIDTH,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                projection_dim=WIDTH,
            )
        )
    return StableDiffusionPrior(
        unet,
        vae,
        text_encoder,
        tokenizer,
        image_encoder,
        schedule=NoiseSchedule.scaled_linear(),
        name=TINY_NAME,
        is_test_model=True,
    )


def byte_level_tokenizer():
    """A CLIP tokenizer over raw bytes (no merges): 256 symbols, the same with ``</w>``, BOS, EOS."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + i for i, symbol in enumerate(symbols)})
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _byte_symbols() -> list[str]:
    """The printable stand-in character of each byte 0..255 used by byte-level BPE.

    Printable Latin-1 bytes stand for themselves; the others are shifted past 255,
    in byte order, so that every byte has a visible, unique symbol.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    keep = set(printable)
    shifted = iter(range(256, 512))
    codes = {b: (b if b in keep else next(shifted)) for b in range(256)}
    return [chr(codes[b]) for b in range(256)]


def _text_config(config_class, tokenizer):
    vocab = tokenizer.get_vocab()
    return config_class(
        vocab_size=len(vocab),
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=WIDTH,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
