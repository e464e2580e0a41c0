"""The toy model's synthetic tasks: the generators live in the data stage
(:mod:`lrm_interp.data.toy_tasks`, re-exported here so ``lrm_interp.toy.tasks`` keeps working);
:func:`model_world` (the fact table a model was trained on) reads a model's provenance, so it
lives with the toy model."""

from __future__ import annotations

from lrm_interp.data.toy_tasks import (FAMILIES, N_PEOPLE, WORLD, WORLD_SEED, Problem, World, build_world,
                                       extract_answer, generate_dataset, generate_trace, problems, to_markup)
from lrm_interp.model.provenance import model_record


def model_world(model) -> World:
    """The fact table a model was trained on: ``build_world(n)`` when its provenance source
    records ``n_people`` (the distilled SmolLM2 reasoner), else the shipped :data:`WORLD`."""
    n = (model_record(model).source or {}).get("n_people")
    return build_world(int(n)) if n else WORLD


__all__ = ["FAMILIES", "N_PEOPLE", "WORLD_SEED", "WORLD", "World", "Problem", "build_world", "generate_trace",
           "generate_dataset", "problems", "extract_answer", "to_markup", "model_world"]
