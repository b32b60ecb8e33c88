"""Named training recipes: typed presets of `TrainConfig` (`emokp train TASK --recipe NAME`).

A recipe is a set of field values; flags given on the command line override it; the resolved config
(with `recipe` recorded) is printed, saved as RUN_DIR/config.json and stored in every checkpoint.

    course    the course project's own choices, for reference (course networks, Adam, no balancing)
    release   the recipe of the shipped models (scripts/build_release_models.py): the default
    fast      a few CPU-minutes for a first look (small networks, few epochs)
    finetune  from a trained model (`--init CKPT|builtin:NAME`, required): its network, a learning
              rate 5-7x below release's, a short schedule with a short warm-up, no weight EMA (its
              warm-up would lag the few hundred steps of a small data set); `--freeze-stem` optional

The release recipes were fixed before training, from common practice, and never tuned on the test
split: weight EMA, longer one-cycle schedules, and for emotion FER's native 48x48 with the `fer48`
network (no stem max-pool), class-balanced sampling, label smoothing and random erasing (mixup and
cutmix are options, off: untested at these short schedules).
Their epochs fit a CPU budget: about 25-45 minutes per model on one core of this project's 2-core
machines (README, release models).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from emokp_ray.errors import UserError
from emokp_ray.training.config import TrainConfig

DEFAULT_RECIPE = "release"

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "keypoints": {
        # the course: Adam 1e-4, constant rate, no augmentation (our head still predicts normalized offsets)
        "course": dict(
            model="course", optimizer="adam", lr=1e-4, schedule="constant", epochs=60, batch_size=32, augment=False
        ),
        # the course backbone with a compact head, label-true augmentation, AdamW one-cycle, weight EMA
        "release": dict(
            model="compact",
            optimizer="adamw",
            lr=1e-3,
            weight_decay=1e-4,
            schedule="onecycle",
            epochs=80,
            batch_size=64,
            ema_decay=0.995,
        ),
        "fast": dict(
            model="small", optimizer="adamw", lr=2e-3, weight_decay=1e-4, schedule="onecycle", epochs=8, batch_size=64
        ),
        # the network comes from --init; a few hundred faces make ~10 steps an epoch at batch 32
        "finetune": dict(
            optimizer="adamw",
            lr=2e-4,
            weight_decay=1e-4,
            schedule="onecycle",
            warmup_fraction=0.1,
            epochs=15,
            batch_size=32,
        ),
    },
    "emotion": {
        # the course: 96x96 upscaled input, Adam, constant rate, no class balancing
        "course": dict(
            model="course",
            input_size=96,
            optimizer="adam",
            lr=1e-3,
            schedule="constant",
            epochs=18,
            batch_size=64,
            imbalance="none",
        ),
        # FER's native 48x48 without the stem max-pool, balanced sampling, strong regularization, weight EMA
        "release": dict(
            model="fer48",
            input_size=48,
            optimizer="adamw",
            lr=2e-3,
            weight_decay=5e-4,
            schedule="onecycle",
            epochs=40,
            batch_size=128,
            imbalance="sampling",
            label_smoothing=0.1,
            random_erasing=0.25,
            ema_decay=0.998,
        ),
        "fast": dict(
            model="small",
            input_size=48,
            optimizer="adamw",
            lr=2e-3,
            weight_decay=5e-4,
            schedule="onecycle",
            epochs=8,
            batch_size=128,
            imbalance="sampling",
            label_smoothing=0.1,
        ),
        "finetune": dict(
            optimizer="adamw",
            lr=3e-4,
            weight_decay=5e-4,
            schedule="onecycle",
            warmup_fraction=0.1,
            epochs=12,
            batch_size=64,
            imbalance="sampling",
            label_smoothing=0.1,
            random_erasing=0.25,
        ),
    },
}
# Recipes that start from trained weights: `--init` is required.
INIT_RECIPES = ("finetune",)


def recipe_names(task: str) -> tuple[str, ...]:
    return tuple(RECIPES.get(task, {}))


def recipe_values(task: str, name: str) -> dict[str, Any]:
    """The field values of a recipe; an unknown name is a `UserError` listing the known ones."""
    try:
        return dict(RECIPES[task][name])
    except KeyError:
        raise UserError(f"unknown recipe {name!r} for {task} (known: {', '.join(recipe_names(task))})") from None


def config_from_recipe(task: str, data: str, out: str, recipe: str = DEFAULT_RECIPE, **overrides: Any) -> TrainConfig:
    """A TrainConfig: the recipe's values, then `overrides` (flags the user gave; None = not given)."""
    values = recipe_values(task, recipe)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown training option(s): {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    if recipe in INIT_RECIPES and not values.get("init"):
        raise UserError(f"--recipe {recipe} starts from a trained model: give --init CKPT or --init builtin:NAME")
    if values.get("init"):
        from emokp_ray.training.init import resolve_init  # reads the checkpoint (torch): only with --init

        values.update(resolve_init(task, values["init"], given.get("model"), given.get("input_size")))
    return TrainConfig(task=task, data=data, out=out, recipe=recipe, **values)
