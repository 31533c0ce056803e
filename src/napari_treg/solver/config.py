"""The method's settings: every default and valid range of TReg, written once.

The defaults are the paper's: guidance 7.5 and the reference schedule of the authors' code
(200 DDIM steps, data consistency on every 3rd step over the first 85 %, 5 CG iterations,
10 Adam steps of adaptive negation); docs/method.md lists every difference from that code.
The API, the CLI options and the widget's fields all come from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from napari_treg.settings import setting, validate


@dataclass(frozen=True)
class TRegSettings:
    """The method's parameters; creating one checks every value (InvalidInputError names it)."""

    steps: int = setting(
        200,
        "DDIM sampling steps (200 as in the paper; fewer is faster and rougher)",
        minimum=1,
        maximum=1000,
    )
    guidance: float = setting(
        7.5,
        "classifier-free guidance weight of the prompt (0 = no text; the paper's 7.5)",
        minimum=0.0,
        maximum=100.0,
    )
    dc_every: int = setting(
        3,
        "data consistency on every n-th step (0 = never)",
        label="DC every",
        minimum=0,
        maximum=1000,
    )
    dc_until: float = setting(
        0.85,
        "data consistency over this fraction of the steps, from the start",
        label="DC until",
        minimum=0.0,
        maximum=1.0,
    )
    cg_iterations: int = setting(
        5,
        "conjugate-gradient iterations per data-consistency step",
        label="CG iterations",
        minimum=0,
        maximum=100,
    )
    cg_lambda: float = setting(
        1e-4,
        "proximal weight of each data-consistency solve (> 0)",
        label="CG lambda",
        minimum=1e-8,
        maximum=1e4,
        positive=True,
    )
    adaptive_negation: bool = setting(
        True,
        "optimise the negative (null) text embedding against the image content in CLIP space",
    )
    negation_lr: float = setting(
        8e-4,
        "learning rate of adaptive negation (the authors suggest 1e-3 for SR, 5e-4 for deblurring)",
        label="negation rate",
        minimum=0.0,
        maximum=0.1,
    )
    negation_steps: int = setting(
        10,
        "Adam steps of adaptive negation per data-consistency step",
        minimum=0,
        maximum=100,
    )

    final_dc: bool = setting(
        False,
        "after the last step, project the result onto the measurement with one more data-consistency "
        "solve, so that it agrees with the data to the noise level (not in the paper; docs/validation.md)",
        label="final DC",
    )
    data_first: bool = setting(
        False,
        "re-noise each data-consistency step from the data-consistent estimate at full weight "
        "(DDS/ReSample-style), so that the measurement steers the coarse structure from the first step and "
        "the prompt decides only what the data leave open (not in the paper; docs/method.md)",
        label="data first",
    )
    renoise_eta: float = setting(
        0.2,
        "with data first: the share of fresh noise in a re-noising (0 = the predicted noise only, as DDIM; "
        "1 = all fresh noise); 0.2 found the class the data decide in 31 of 32 x8 SR seeds without text, "
        "0.5 in 28 (docs/method.md)",
        label="re-noise eta",
        minimum=0.0,
        maximum=1.0,
    )

    def __post_init__(self) -> None:
        validate(self)

    def as_dict(self) -> dict:
        return asdict(self)


#: the name before issue 29 (one suffix for the settings classes), kept for one release
TRegConfig = TRegSettings
