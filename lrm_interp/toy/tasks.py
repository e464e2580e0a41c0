"""The toy model's synthetic tasks: the generators live in the data stage
(:mod:`lrm_interp.data.toy_tasks`, re-exported here so ``lrm_interp.toy.tasks`` keeps working);
:func:`model_world` (the fact table a model was trained on, read from its provenance) lives in
:mod:`lrm_interp.model.world` and is re-exported here."""

from __future__ import annotations

from lrm_interp.data.toy_tasks import (
    FAMILIES,
    N_PEOPLE,
    WORLD,
    WORLD_SEED,
    Problem,
    World,
    build_world,
    extract_answer,
    generate_dataset,
    generate_trace,
    problems,
    to_markup,
)
from lrm_interp.model.world import model_world

__all__ = [
    "FAMILIES",
    "N_PEOPLE",
    "WORLD_SEED",
    "WORLD",
    "World",
    "Problem",
    "build_world",
    "generate_trace",
    "generate_dataset",
    "problems",
    "extract_answer",
    "to_markup",
    "model_world",
]
