"""The training recipes: one table of hyperparameters per recipe family and kind (:data:`RECIPES`)
and its resolver (:func:`recipe_spec`). The zoo entries (:mod:`uniq_hub.catalog.zoo`) and ``uniq-hub train``
(:func:`uniq_hub.training.recipes.recipe_defaults`) both read it here. Torch-free, and it imports
nothing from the zoo: the zoo imports it."""

from __future__ import annotations

from typing import Any

from ..model.constants import FP_BITS

__all__ = ["RECIPES", "recipe_kind", "recipe_spec"]

# Recipes per family kind: "fp", "multi" (2..4 bits; weight_decay, epochs and max_steps may be dicts over bits),
# "binary". The zoo families name their recipe family (uniq_hub.catalog.zoo.FAMILIES).
_ADAM_WARMUP = dict(optimizer="adam", lr=0.004, warmup_epochs=5, warmup_lr=0.001)
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "imagenet": {
        # The FP baseline is not published (the paper took pytorchcv's weights): torchvision's ResNet recipe
        # with a cosine schedule, for users who train their own.
        "fp": dict(optimizer="sgd", lr=0.1, momentum=0.9, epochs=90, batch_size=256, weight_decay=1e-4,
                   source="here", notes="torchvision's ResNet recipe with cosine; the paper used pytorchcv weights"),
        "multi": dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs=90, batch_size=256,
                      weight_decay={4: 1e-4, 3: 0.5e-4, 2: 0.25e-4}),
        "binary": dict(**_ADAM_WARMUP, epochs=90, batch_size=256, weight_decay=0.0),
    },
    "cifar100": {
        "fp": dict(optimizer="sgd", lr=0.1, momentum=0.9, epochs=350, batch_size=128, weight_decay=5e-4,
                   source="here", notes="the paper trains the FP model from scratch without giving its "
                   "learning rate; 0.1 is the usual CIFAR choice"),
        "multi": dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs=350, batch_size=128, weight_decay=5e-4),
        "binary": dict(**_ADAM_WARMUP, epochs=350, batch_size=128, weight_decay=0.0,
                       notes="weight decay 0 at 1 bit as in Section 5.1 and the reference code, although "
                       "Section 5.2 states 5e-4 for all CIFAR-100 runs"),
    },
    # Recipes chosen in this project for one 2-core session (two chains side by side, one thread each, the
    # machine shared with other work; trained with --mixed-precision bf16 since 2026-12-08, ResNet-20 FP about
    # 870 img/s on one thread), not from the paper. ResNet-20 on these: FP 94.20, then 94.05 / 93.62 / 93.50 /
    # 91.30 at 4 / 3 / 2 / 1 bits; MobileNetV2 is not converged. max_steps cuts an epoch short (the cosine
    # schedule ends there).
    "fashion-mnist": {
        "fp": dict(optimizer="sgd", lr=0.1, momentum=0.9, epochs=50, batch_size=128, weight_decay=5e-4,
                   source="here", notes="50 epochs (was 6: 91.48 test), the budget of one 2-core session at bf16 "
                   "speed (about 65 s an epoch)"),
        "multi": dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs={4: 2, 3: 2, 2: 3},
                      batch_size=128, weight_decay=5e-4, source="here",
                      notes="2 epochs at 4 and 3 bits, 3 at 2 bits (were 215 steps, 215 steps and 1 epoch from the "
                      "6-epoch FP): more for the 50-epoch FP they now start from"),
        "binary": dict(optimizer="adam", lr=0.004, warmup_epochs=0.25, warmup_lr=0.001, epochs=4, batch_size=128,
                       weight_decay=0.0, source="here",
                       notes="the paper's 1-bit recipe (Adam, constant warm-up at 0.001, then 0.004 with cosine) "
                       "on a 4-epoch schedule (was 2) with a quarter-epoch warm-up"),
    },
    "fashion-mnist-mobilenetv2": {
        "fp": dict(optimizer="sgd", lr=0.1, momentum=0.9, epochs=10, batch_size=128, weight_decay=5e-4,
                   source="here", notes="10 epochs (was 2: 85.59 test), what one core gives it beside the ResNet-20 "
                   "chain in one session"),
        "multi": dict(optimizer="sgd", lr=0.005, momentum=0.9, epochs=1, max_steps={4: 240, 3: 240, 2: 240},
                      batch_size=128, weight_decay=5e-4, source="here",
                      notes="240 steps (a little over half an epoch) at every multi-bit width (4x the first zoo's 60 "
                      "gave +3.2 val points at 2 bits: benchmarks/results/mobilenetv2-ablation-fashion-mnist.json); "
                      "lr 0.005: the ImageNet-stride "
                      "MobileNetV2 diverged at 0.01 at 4 bits (loss 1.8 -> 4.1) and lost 1.9 points in one epoch at "
                      "0.001"),
        "binary": dict(optimizer="adam", lr=0.004, warmup_epochs=0.03, warmup_lr=0.001, epochs=1, batch_size=128,
                       weight_decay=0.0, source="here",
                       notes="the paper's 1-bit recipe on one epoch (430 steps; 240 gave +20 val points over 60: "
                       "benchmarks/results/mobilenetv2-ablation-fashion-mnist.json) with a 13-step warm-up"),
    },
}


def recipe_kind(w_bits: int, a_bits: int) -> str:
    """"fp" when both sides are full precision, "binary" when either is 1 bit, else "multi"."""
    if w_bits == FP_BITS and a_bits == FP_BITS:
        return "fp"
    return "binary" if 1 in (w_bits, a_bits) else "multi"


def recipe_spec(family: str, w_bits: int, a_bits: int, calib_batches: int) -> dict[str, Any]:
    """The one resolver of :data:`RECIPES`: the hyperparameters of ``family`` (a key of RECIPES) at
    these bits, the weight decay (epochs, max_steps) of the lower side's bits, and ``calib_batches`` (the
    dataset's calibration batches) for quantized runs (none at full precision)."""
    kind = recipe_kind(w_bits, a_bits)
    if kind not in RECIPES.get(family, {}):
        raise ValueError(f"no {kind!r} recipe for family {family!r}; families: {sorted(RECIPES)}")
    spec = dict(RECIPES[family][kind])
    bits = min(w_bits, a_bits)
    for name in ("weight_decay", "epochs", "max_steps"):
        if isinstance(spec.get(name), dict):
            if bits not in spec[name]:
                raise ValueError(f"recipe {family}/{kind} has no {name} for {bits} bits (it has {sorted(spec[name])})")
            spec[name] = spec[name][bits]
    spec["calib_batches"] = 0 if kind == "fp" else calib_batches
    return spec
