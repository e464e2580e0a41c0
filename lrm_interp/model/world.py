"""The toy tasks' fact table a model learned, read from its provenance."""

from __future__ import annotations

from lrm_interp.data.toy_tasks import WORLD, World, build_world
from lrm_interp.model.provenance import model_record


def model_world(model) -> World:
    """The fact table a model was trained on: ``build_world(n)`` when its provenance source
    records ``n_people`` (the distilled SmolLM2 reasoner), else the shipped :data:`WORLD`."""
    n = (model_record(model).source or {}).get("n_people")
    return build_world(int(n)) if n else WORLD


__all__ = ["model_world"]
