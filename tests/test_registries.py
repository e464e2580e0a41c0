"""The registries on the lowest floors: model aliases (:mod:`lrm_interp.model.loading`) and
benchmark tasks (:mod:`lrm_interp.data.benchmarks.tasks`). Later stages register into them
(the ``toy`` model through the ``lrm_interp.models`` entry point, the toy families on import);
a name registered twice with something else raises, the same thing again is a no-op."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from lrm_interp.data import benchmarks as B
from lrm_interp.data.benchmarks import tasks as T
from lrm_interp.model import loading as L


@pytest.fixture
def clean_aliases(monkeypatch):
    monkeypatch.setattr(L, "_ALIASES", dict(L._ALIASES))
    monkeypatch.setattr(L, "_REPLACED", set(L._REPLACED))


@pytest.fixture
def clean_tasks(monkeypatch):
    monkeypatch.setattr(T, "TASKS", dict(T.TASKS))
    monkeypatch.setattr(T, "TASK_ALIASES", dict(T.TASK_ALIASES))


def _loader(*, dtype=None, device_map=None):
    return "model", "tokenizer"


def _other(*, dtype=None, device_map=None):
    return "other", "tokenizer"


# ------------------------------------------------------------------------------------- models
def test_toy_alias_comes_from_the_entry_point_and_loads():
    from lrm_interp.toy import load_toy_model

    assert "toy" in L._entry_points() and "toy" not in L._ALIASES  # the model stage never names toy
    assert L._entry_points()["toy"] == {"lrm_interp.toy:load_toy_alias"}
    model, tok = L.load_model("toy")
    ref, _ = load_toy_model()
    ids = tok("Compute 2 + 3.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert "toy" in L.model_aliases()


def test_alias_registered_twice_raises_the_same_loader_again_is_a_no_op(clean_aliases):
    L.register_model_alias("My-Model", _loader)
    L.register_model_alias("my-model", _loader)  # the same loader again: no-op
    L.register_model_alias("my-model", f"{__name__}:_loader")  # the same, named as a string
    assert L.load_model("MY-MODEL") == ("model", "tokenizer")
    with pytest.raises(ValueError, match="registered twice"):
        L.register_model_alias("my-model", _other)
    with pytest.raises(ValueError, match="registered twice"):
        L.register_model_alias("smollm2", _other)  # built in
    with pytest.raises(ValueError, match="registered twice"):
        L.register_model_alias("toy", _other)  # from the entry point
    L.register_model_alias("toy", "lrm_interp.toy:load_toy_alias")  # what the entry point says: fine
    L.register_model_alias("my-model", _other, replace=True)
    assert L.load_model("my-model") == ("other", "tokenizer")
    L.register_model_alias("toy", _other, replace=True)  # deliberately over the entry point
    assert L.load_model("toy") == ("other", "tokenizer")
    with pytest.raises(ValueError, match="non-empty"):
        L.register_model_alias("  ", _loader)
    with pytest.raises(TypeError):
        L.register_model_alias("x", "no_colon")


def test_a_module_imported_anew_registers_its_loader_again(clean_aliases, tmp_path, monkeypatch):
    (tmp_path / "plugin_models.py").write_text(
        "from lrm_interp.model.loading import register_model_alias\n"
        "def load(*, dtype=None, device_map=None):\n    return 'plugin', 'tok'\n"
        "register_model_alias('plugin', load)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("plugin_models")
    monkeypatch.delitem(sys.modules, "plugin_models")  # undone after the test: the module is forgotten
    monkeypatch.setitem(sys.modules, "plugin_models", mod)
    importlib.reload(mod)  # a new function object with the same module and name: accepted
    assert L.load_model("plugin") == ("plugin", "tok")


def test_entry_point_and_registration_that_disagree_raise_at_lookup(clean_aliases, monkeypatch):
    monkeypatch.setattr(L, "_entry_points", lambda: {"clash": {"a.b:c"}, "two": {"a.b:c", "d.e:f"}})
    L._ALIASES["clash"] = _loader  # bypassing register_model_alias, as an old plugin might
    with pytest.raises(ValueError, match="registered twice"):
        L.load_model("clash")
    with pytest.raises(ValueError, match="registered twice"):
        L.load_model("two")


# ------------------------------------------------------------------------------------- tasks
def test_paper_tasks_then_toy_families_are_registered():
    assert list(T.TASKS) == ["aime", "folio", "temporal", "musique", "math", "logic", "knowledge"]
    assert B.get_task("AIME24").name == "aime" and B.get_task("bigbench_temporal_sequences").name == "temporal"
    items = B.load("logic", per_family=2, toy_seed=5)
    assert [i.id for i in items] == ["logic/0", "logic/1"] and items[0].source.startswith("lrm_interp.data.toy_tasks ")
    assert B.grade("logic", items[0], "x\n</think>\nThe answer is " + items[0].gold + ".").score == 1.0


def test_task_registered_twice_raises_the_same_task_again_is_a_no_op(clean_tasks):
    from lrm_interp.data.benchmarks import toy

    math = T.TASKS["math"]
    assert T.register_task(math) is math
    importlib.reload(toy)  # the toy module imported anew registers equal tasks: accepted
    assert list(T.TASKS)[-3:] == ["math", "logic", "knowledge"]
    other = T.Task("math", "another math", "accuracy", True, False, (), math.loader, math.grader)
    with pytest.raises(ValueError, match="registered twice"):
        T.register_task(other)
    new = T.Task("mine", "my task", "accuracy", False, False, (), math.loader, math.grader)
    with pytest.raises(ValueError, match="taken by task 'aime'"):
        T.register_task(new, aliases=("aime24",))
    with pytest.raises(ValueError, match="taken by task 'folio'"):
        T.register_task(new, aliases=("folio",))
    assert "mine" not in T.TASKS
    T.register_task(new, aliases=("my-task",))
    assert B.get_task("MY-TASK") is new
    with pytest.raises(ValueError, match="already an alias"):
        T.register_task(T.Task("aime24", "x", "accuracy", False, False, (), math.loader, math.grader))
    with pytest.raises(ValueError, match="metric"):
        T.register_task(T.Task("bad", "x", "f1", False, False, (), math.loader, math.grader))
    with pytest.raises(ValueError, match="lower case"):
        T.register_task(T.Task("Bad", "x", "accuracy", False, False, (), math.loader, math.grader))


def test_the_grader_imports_no_model_or_generation():
    import subprocess

    code = (
        "import sys, lrm_interp.data.benchmarks.grading\n"
        "bad = [m for m in sys.modules if m.startswith(('lrm_interp.model', 'lrm_interp.toy', "
        "'lrm_interp.evaluation'))]\nassert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
