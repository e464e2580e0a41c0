"""The ``Attribution`` result: per-behaviour, per-site importance plus steering vectors.

On disk (``save(dir)``)::

    dir/attribution.json         behaviours, sites, method, provenance (model, dtype,
                                 quantization, tokenizer, settings, counts, skipped spans)
    dir/attribution.safetensors  "scores" [n_behaviors, n_sites] float64 and one steering
                                 vector per (behaviour, site): "vec/<behaviour>/<site>" [d_out];
                                 metadata: format "lrm_interp.attribution/1" and the payload's
                                 SHA-256 (repeated in attribution.json as "tensors_sha256") and
                                 "labels_sha256": the SHA-256 of the labels (method, behaviours,
                                 site records) that name the score rows and columns, also in
                                 attribution.json, so relabelled scores are refused on load

Both files are written atomically; nothing is pickled; a changed or mismatched file is refused
on load.
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lrm_interp._io import (
    CHECKSUM_KEY,
    ChecksumError,
    atomic_save_figure,
    atomic_write_text,
    check_out_folder,
    loads_strict,
    path_argument,
    payload_checksum,
    read_safetensors,
    read_text_file,
    refuse_file_as_folder,
    refuse_other_result_folder,
    refuse_result_file,
    write_safetensors,
)
from lrm_interp.attribution.resume import (
    check_overwrite_target,
    partials_contents_fingerprint,
    provenance_checksum,
    trace_content_keys,
)
from lrm_interp.checks import (
    check_float,
    checked_arguments,
    number_value,
    refuse_string,
    shown_value,
    user_stacklevel,
)
from lrm_interp.model.provenance import swapped_compression
from lrm_interp.model.sites import KIND_ORDER, Site

FORMAT_VERSION = 1
#: what :meth:`Attribution.grid` / :meth:`Attribution.heatmap` can show
GRID_VALUES = ("ri", "score", "rank")
#: what :meth:`ImportanceShift.heatmap` / :meth:`ImportanceShift.as_attribution` can show (the CLI's
#: ``compare --view`` choices)
SHIFT_VIEWS = ("decreases", "signed")
#: the tables :meth:`Attribution.write_tables` writes beside the result
_TABLES = ("scores.csv", "heatmap.png")
#: ``format`` in the metadata of ``attribution.safetensors`` (files written before it have none).
TENSORS_FORMAT = "lrm_interp.attribution/1"


def site_scores(scores: Any, behavior: str | None = None) -> dict[str, float]:
    """A ``{site: score}`` dict from a mapping or an :class:`Attribution` (its :meth:`Attribution.site_ri`).

    The one place where "module importance" given by a user (dict or result) is normalised;
    protection policies and saliency weighting both call it.
    """
    if isinstance(scores, Mapping):
        out: dict[str, float] = {}
        for k, v in scores.items():  # a NaN, -inf or '3' ranked without a word (H33-MBSKEYS)
            x = number_value(v, f"scores[{k!r}] (site -> importance)")
            if not (math.isfinite(x) and x >= 0):
                raise ValueError(
                    f"scores[{k!r}] is {x}: a module's importance is finite and >= 0 (a negative one inverts the "
                    "ranking or the weighing)"
                )
            out[str(k)] = x
        return out
    if isinstance(scores, Attribution):
        return scores.site_ri(behavior)
    raise TypeError(f"scores must be a mapping site -> score or an Attribution, got {type(scores).__name__}")


def check_finite_scores(scores: torch.Tensor, behaviors: Sequence[str], site_names: Sequence[str]) -> None:
    """``ValueError`` naming the behaviour and the site of the first non-finite score (NaN, inf) of
    ``scores`` ``[behaviours, sites]``: a ranking of NaN is meaningless. The one check of
    :class:`Attribution` (on construction, so :meth:`Attribution.load` too) and :meth:`Attribution.save`
    (scores changed in place after construction were written, and every reader refused them, H8-NAN1)."""
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        i, j = bad.nonzero()[0].tolist()
        raise ValueError(
            f"scores are not finite (e.g. behaviour {behaviors[i]!r}, site {site_names[j]}: "
            f"{float(scores[i, j])}): a ranking of NaN is meaningless"
        )


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank (1 = largest) along the last dim; ties broken by site order."""
    order = torch.argsort(-scores, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ar = torch.arange(1, scores.shape[-1] + 1).expand_as(order)
    ranks.scatter_(-1, order, ar)
    return ranks


def relative_importance(scores: torch.Tensor) -> torch.Tensor:
    """RI = I / sum over sites of I, per behaviour row (rows of zeros stay zero)."""
    tot = scores.sum(dim=-1, keepdim=True)
    return torch.where(tot > 0, scores / tot.clamp_min(1e-300), torch.zeros_like(scores))


def json_record(value: Any) -> Any:
    """``value`` as it is written into ``attribution.json``: through ``json.dumps(default=str)``, with
    NaN / ±inf as ``null`` (not JSON: :meth:`Attribution.load`'s strict reader refuses them, H11-AJS)."""

    def finite(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list):
            return [finite(v) for v in x]
        return x

    return finite(json.loads(json.dumps(value, default=str)))


def labels_checksum(method: Any, behaviors: Sequence[Any], sites: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 (hex) of the canonical JSON of the labels of a score matrix: ``method``, the
    behaviour names (rows) and the site records (columns, as :meth:`Site.to_dict`)."""
    import hashlib

    doc = {"method": method, "behaviors": list(behaviors), "sites": [dict(s) for s in sites]}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(b"lrm_interp.attribution.labels/1\0" + text.encode("utf-8")).hexdigest()


_SITE_INT_FIELDS = ("in_features", "out_features", "n_weights", "n_params")
_SITE_STR_FIELDS = ("name", "block", "kind", "module_type")


def _checked_labels(path: Path, meta: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[Site, ...]]:
    """The behaviours and sites of an ``attribution.json``; a malformed, non-finite or duplicate
    record raises ``ValueError`` naming ``path``."""
    behaviors, records = meta.get("behaviors"), meta.get("sites")
    if not isinstance(behaviors, list) or not all(isinstance(b, str) for b in behaviors):
        raise ValueError(f"{path}: 'behaviors' must be a list of names, got {behaviors!r:.80}")
    dup = sorted(b for b, n in Counter(behaviors).items() if n > 1)
    if dup:
        raise ValueError(f"{path}: duplicate behaviours {dup}: each row of scores needs its own name")
    if not isinstance(records, list):
        raise ValueError(f"{path}: 'sites' must be a list of site records, got {type(records).__name__}")
    fields = set(_SITE_INT_FIELDS) | set(_SITE_STR_FIELDS) | {"layer"}
    sites = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or set(r) != fields:
            got = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise ValueError(f"{path}: site record {i} is malformed (fields {got}, expected {sorted(fields)})")
        bad = [k for k in _SITE_STR_FIELDS if not isinstance(r[k], str) or (k == "name" and not r[k])]
        bad += [
            k
            for k in _SITE_INT_FIELDS
            if isinstance(r[k], bool) or not isinstance(r[k], int) or r[k] < 0  # NaN/inf/1.5 are floats
        ]
        if r["layer"] is not None and (
            isinstance(r["layer"], bool) or not isinstance(r["layer"], int) or r["layer"] < 0
        ):
            bad.append("layer")
        if bad:
            shown = ", ".join(f"{k}={r[k]!r}" for k in bad)
            raise ValueError(
                f"{path}: site record {i} ({r.get('name')!r}) has invalid values ({shown}): names must be "
                "strings (the site name non-empty), sizes and layer finite non-negative integers"
            )
        sites.append(Site.from_dict(r))
    dup = sorted(name for name, n in Counter(s.name for s in sites).items() if n > 1)
    if dup:
        raise ValueError(f"{path}: duplicate site records {dup[:3]}: each column of scores needs its own site")
    return tuple(behaviors), tuple(sites)


def _checked_tensors(
    jpath: Path,
    tpath: Path,
    behaviors: tuple[str, ...],
    sites: tuple[Site, ...],
    tensors: Mapping[str, torch.Tensor],
) -> dict[str, dict[str, torch.Tensor]]:
    """The steering vectors of a saved result, once its tensors fit its labels: ``scores`` is
    ``[behaviours, sites]`` and every ``vec/<behaviour>/<site>`` names a listed behaviour and site
    and has that site's output size; else ``ValueError`` naming both files (they do not belong
    together: a site or behaviour removed or added by hand, or files of two saves)."""
    again = (
        "the two files do not belong together (a record removed or added by hand, or two saves); save the result again"
    )
    if "scores" not in tensors:
        raise ValueError(f"{tpath}: no 'scores' tensor: not an attribution result; {again}")
    shape = tuple(tensors["scores"].shape)
    if shape != (len(behaviors), len(sites)):
        raise ValueError(
            f"{jpath} lists {len(behaviors)} behaviours x {len(sites)} sites, but the scores in {tpath.name} "
            f"are {' x '.join(map(str, shape)) or 'a scalar'}: {again}"
        )
    by_name = {site.name: site for site in sites}
    vectors: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if not k.startswith("vec/"):
            continue
        _, beh, site_name = k.split("/", 2) if k.count("/") >= 2 else (k, "", "")
        site = by_name.get(site_name)
        if beh not in behaviors or site is None:
            what = f"behaviour {beh!r}" if beh not in behaviors else f"site {site_name!r}"
            raise ValueError(f"{tpath}: steering vector {k!r} is for a {what} that {jpath.name} does not list: {again}")
        if v.ndim != 1 or (site.out_features and v.numel() != site.out_features):
            raise ValueError(
                f"{tpath}: steering vector {k!r} has shape {tuple(v.shape)}, but {jpath.name} records "
                f"{site_name} with {site.out_features} outputs: {again}"
            )
        vectors.setdefault(beh, {})[site_name] = v
    return vectors


@dataclass(frozen=True)
class Attribution:
    """Importance of every linear site for every behaviour.

    Attributes:
        behaviors: behaviour labels (rows).
        sites: linear sites (columns).
        scores: ``[n_behaviors, n_sites]`` float64. For ``method="attribution"`` the AtP
            score I of paper Eq. 2 (or the code variant named in provenance); for
            ``method="patching"`` the same score measured by exact activation patching at
            ``settings["patch_alpha"]`` (I_real, docs/method.md); for ``method="dom"`` the
            relative size of the mean shift ``‖u‖/‖ā_all‖``.
        method: ``"attribution"``, ``"patching"`` or ``"dom"``.
        vectors: ``vectors[behavior][site]`` = steering vector û ``[d_out]`` (float32).
        provenance: JSON-able dict (model, dtype, quantization, tokenizer, settings,
            counts, skipped spans, versions).
    """

    behaviors: tuple[str, ...]
    sites: tuple[Site, ...]
    scores: torch.Tensor
    method: str
    vectors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    #: ``{trace file key: content fingerprint}`` of the traces scored (prompt, response, spans), read
    #: by :meth:`load` from the run's ``partial/dom`` keys (:func:`trace_content_keys`); ``None`` when
    #: unknown. :func:`comparability` refuses two results whose common traces differ in content.
    trace_keys: dict[str, str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "behaviors", tuple(self.behaviors))
        object.__setattr__(self, "sites", tuple(self.sites))
        s = torch.as_tensor(self.scores, dtype=torch.float64)
        if s.shape != (len(self.behaviors), len(self.sites)):
            raise ValueError(f"scores shape {tuple(s.shape)} != ({len(self.behaviors)}, {len(self.sites)})")
        check_finite_scores(s, self.behaviors, [site.name for site in self.sites])
        object.__setattr__(self, "scores", s)

    # ---------------------------------------------------------------- views
    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    @property
    def ri(self) -> torch.Tensor:
        """Relative importance ``[n_behaviors, n_sites]``; each row sums to 1."""
        return relative_importance(self.scores)

    @property
    def ranks(self) -> torch.Tensor:
        """Rank of each site per behaviour (1 = most important), ``[n_behaviors, n_sites]``."""
        return _ranks(self.scores)

    def _row(self, behavior: str) -> int:
        try:
            return self.behaviors.index(behavior)
        except ValueError:
            raise KeyError(f"behaviour {behavior!r} not in this result {self.behaviors}") from None

    def score(self, behavior: str, site: str) -> float:
        return float(self.scores[self._row(behavior), self.site_names.index(site)])

    def top(self, k: int = 10, behavior: str | None = None) -> list[tuple[str, str, float]]:
        """The ``k`` most important sites: ``(behavior, site, RI)`` sorted by RI.

        With ``behavior=None`` the ranking uses the mean RI over behaviours
        (reported as behaviour ``"mean"``).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:  # top(-1) gave all rows but the last (H7-API3)
            raise ValueError(f"k must be an integer >= 1 (the number of sites to list), got {k!r}")
        if behavior is None:
            ri, label = self.ri.mean(dim=0), "mean"
        else:
            ri, label = self.ri[self._row(behavior)], behavior
        idx = torch.argsort(-ri, stable=True)[:k]
        return [(label, self.sites[i].name, float(ri[i])) for i in idx]

    def to_dataframe(self):
        """Tidy table: one row per (behaviour, site) with layer, block, kind, score, RI, rank."""
        pd = _pandas()
        ri, ranks = self.ri, self.ranks
        rows = []
        for b, beh in enumerate(self.behaviors):
            for j, s in enumerate(self.sites):
                rows.append(
                    {
                        "behavior": beh,
                        "site": s.name,
                        "layer": s.layer,
                        "block": s.block,
                        "kind": s.kind,
                        "n_params": s.n_params,
                        "score": float(self.scores[b, j]),
                        "ri": float(ri[b, j]),
                        "rank": int(ranks[b, j]),
                    }
                )
        return pd.DataFrame(rows)

    def grid(self, behavior: str, value: str = "ri") -> tuple[torch.Tensor, list[int], list[str]]:
        """``[n_layers, n_kinds]`` matrix of ``value`` ("ri", "score" or "rank") for one behaviour.

        Sites outside the layer stack are left out; missing cells are NaN. Another ``value`` raises
        ``ValueError`` naming the three (it was a bare ``KeyError: 'foo'``, H9-E2).
        """
        if not isinstance(value, str) or value not in GRID_VALUES:
            raise ValueError(f"value must be one of {', '.join(map(repr, GRID_VALUES))}, got {value!r}")
        row = {"ri": self.ri, "score": self.scores, "rank": self.ranks.double()}[value][self._row(behavior)]
        layers = sorted({s.layer for s in self.sites if s.layer is not None})
        present = {s.kind for s in self.sites if s.layer is not None}
        kinds = [k for k in KIND_ORDER if k in present] + sorted(present - set(KIND_ORDER))
        g = torch.full((len(layers), len(kinds)), float("nan"), dtype=torch.float64)
        for j, s in enumerate(self.sites):
            if s.layer is None:
                continue
            g[layers.index(s.layer), kinds.index(s.kind)] = row[j]
        return g, layers, kinds

    def heatmap(self, behaviors: Sequence[str] | None = None, value: str = "ri", **kw):
        """Layer × module-kind heatmap, one panel per behaviour. Returns a matplotlib Figure."""
        from lrm_interp.attribution.plots import grid_heatmaps

        if isinstance(behaviors, (str, bytes, Path)):  # heatmap("plot.png") read it as behaviours (H7-API10)
            raise TypeError(
                f"behaviors must be a list of behaviour labels (e.g. {list(self.behaviors[:2])}), got the "
                f"{type(behaviors).__name__} {str(behaviors)!r}; heatmap returns a Figure: to write a file, "
                "use fig.savefig(path) or write_tables(folder)"
            )
        behaviors = list(behaviors or self.behaviors)
        grids = [self.grid(b, value) for b in behaviors]
        name = str(self.provenance.get("model", {}).get("name", "") or "").rstrip("/").split("/")[-1]
        title = kw.pop("title", f"{self.method} {value} — {name}")
        return grid_heatmaps(grids, behaviors, title=title, cbar_label=value, **kw)

    def site_ri(self, behavior: str | None = None) -> dict[str, float]:
        """``{site: RI}`` of one behaviour, or the mean RI over behaviours (``behavior=None``)."""
        ri = self.ri[self._row(behavior)] if behavior is not None else self.ri.mean(dim=0)
        return {n: float(x) for n, x in zip(self.site_names, ri)}

    def steering_vector(self, behavior: str, site: str) -> torch.Tensor:
        try:
            return self.vectors[behavior][site]
        except KeyError:
            raise KeyError(f"no steering vector for ({behavior!r}, {site!r})") from None

    def steer(self, model, behavior: str, *, alpha: float = 1.0, sites: Sequence[str] | None = None, positions=None):
        """Context manager adding ``alpha·û`` to the outputs of ``sites`` (default: top-1 site).

        ``alpha``: any finite number within float32's range (negative steers away from the
        behaviour, 0 changes nothing); NaN, ±inf or a non-number (``"4"``) are refused here with
        ``ValueError`` (:func:`~lrm_interp.checks.check_float`), before any hook is added: NaN
        used to turn every logit into NaN and generate NUL tokens without a word, and a string
        failed inside the forward hook (H14-STA). ``sites``: a non-empty list of site names; a
        string is refused with ``TypeError`` (write ``sites=['model.layers.1.mlp.up_proj']``).
        ``positions``: ``None`` (every position), a list of token positions (ints), a ``slice`` or a
        ``[s]`` / ``[b, s]`` mask tensor (:mod:`lrm_interp.model.patching`); a string, a single number
        or a list holding anything but ints is refused with ``TypeError`` before any hook (``"all"``
        failed inside the forward hook, H15-SPS).

        Example::

            with attr.steer(model, "backtracking", alpha=4.0):
                out = model.generate(**inputs)
        """
        from lrm_interp.model.patching import add_to_outputs

        f32 = float(torch.finfo(torch.float32).max)  # a larger α overflows the float32 output to ±inf
        alpha = check_float("alpha", alpha, min=-f32, max=f32)
        refuse_string("sites", sites, "a list of site names")
        if sites is not None and (not isinstance(sites, Sequence) or not all(isinstance(x, str) for x in sites)):
            raise TypeError(f"sites must be None or a list of site names, got {shown_value(sites)}")
        if sites is not None and not sites:
            raise ValueError(
                "sites is empty: steering would change nothing; give site names, or None for the top-1 site"
            )
        _check_positions(positions)
        if sites is None:
            sites = [self.top(1, behavior)[0][1]]
        additions = {s: (self.steering_vector(behavior, s), positions) for s in sites}
        return add_to_outputs(model, additions, alpha=alpha)

    def items(self) -> Iterator[tuple[str, Site, float]]:
        for b, beh in enumerate(self.behaviors):
            for j, s in enumerate(self.sites):
                yield beh, s, float(self.scores[b, j])

    # ---------------------------------------------------------------- display
    @property
    def model_name(self) -> str:
        """The model's short name from provenance (last path component), or ``""``."""
        return str((self.provenance.get("model") or {}).get("name", "") or "").rstrip("/").split("/")[-1]

    def __repr__(self) -> str:
        counts = self.provenance.get("counts") or {}
        spans = sum((counts.get("spans") or {}).values())
        top = ", ".join(f"{s} {ri:.3f}" for _, s, ri in self.top(3))
        return (
            f"Attribution(method={self.method!r}, model={self.model_name!r}, {len(self.behaviors)} behaviours × "
            f"{len(self.sites)} sites, {counts.get('traces', '?')} traces / {spans} spans; "
            f"top by mean RI: {top})"
        )

    def _repr_html_(self, k: int = 5) -> str:
        """Jupyter: summary, the top ``k`` sites per behaviour (RI) and a small heatmap per behaviour."""
        from lrm_interp.display import box, esc, html_heatmap, html_table

        counts = self.provenance.get("counts") or {}
        spans = counts.get("spans") or {}
        head = (
            f'<div style="font-size:12px;color:#444">{esc(self.method)} on {esc(self.model_name or "?")}: '
            f"{len(self.behaviors)} behaviours × {len(self.sites)} linear sites, "
            f"{esc(counts.get('traces', '?'))} traces, spans: "
            f"{esc(', '.join(f'{b} {n}' for b, n in spans.items()) or '?')}</div>"
        )
        n_vec = sum(len(v) for v in self.vectors.values())
        if n_vec:
            norms = [float(v.norm()) for per in self.vectors.values() for v in per.values()]
            head += (
                f'<div style="font-size:12px;color:#444">steering vectors û: {n_vec} (behaviour, site) pairs, '
                f"norm {min(norms):.3g}–{max(norms):.3g}; <code>attr.steer(model, behaviour, alpha=…)</code></div>"
            )
        rows = [[b] + [f"{s} ({ri:.3f})" for _, s, ri in self.top(k, b)] for b in self.behaviors]
        rows.append(["mean"] + [f"{s} ({ri:.3f})" for _, s, ri in self.top(k)])
        table = html_table(
            ["behaviour"] + [f"#{i + 1}" for i in range(min(k, len(self.sites)))],
            rows,
            caption="top sites by relative importance",
        )
        maps = "".join(html_heatmap(*self.grid(b), title=b) for b in self.behaviors)
        return box("Attribution", head, table, f"<div>{maps}</div>")

    # ---------------------------------------------------------------- I/O
    @checked_arguments
    def write_tables(self, directory: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write ``scores.csv`` (:meth:`to_dataframe`) and ``heatmap.png`` (:meth:`heatmap`) atomically.

        Existing files of those names are replaced only when they are this result's tables (the
        folder holds this result, saved by :meth:`save`: its ``attribution.json`` records these
        scores and provenance) or ``overwrite=True``; else ``FileExistsError`` names the first,
        before anything is written (a user's ``scores.csv`` was replaced silently, H8-WT). A folder
        holding a finished result of another kind (a study's) is refused whatever ``overwrite``
        says (:func:`~lrm_interp._io.refuse_other_result_folder`, H9-MIX), and so is the folder of
        another attribution result (its ``attribution.json`` records other scores or provenance):
        the tables would describe this result while :meth:`load` gives that one (H15-WTM)."""
        d = Path(_folder_argument(directory, "directory"))
        refuse_other_result_folder(d, "attribution", "directory")
        self._refuse_another_results_folder(d)
        there = [d / n for n in _TABLES if (d / n).exists() or (d / n).is_symlink()]
        if there and not overwrite and not self._saved_in(d):
            raise FileExistsError(
                errno.EEXIST,
                "exists and is not a table of this result (the folder holds no attribution.json of it): not "
                "replaced (pass overwrite=True to replace it, or choose another folder)",
                str(there[0]),
            )
        atomic_write_text(d / "scores.csv", self.to_dataframe().to_csv(index=False))
        return [d / "scores.csv", _save_and_close(self.heatmap(), d / "heatmap.png")]

    def _refuse_another_results_folder(self, d: Path) -> None:
        """``FileExistsError`` naming ``d`` when it holds the ``attribution.json`` of another result
        (:meth:`_saved_in` says it is not this one's), whatever ``overwrite`` says: this result's
        ``scores.csv`` / ``heatmap.png`` were written beside it and ``Attribution.load(d)`` gave the
        other result (H15-WTM). A file saved before checksums (no ``tensors_sha256``) is compared by
        its labels and provenance."""
        jpath = d / "attribution.json"
        if not jpath.is_file() or self._saved_in(d):
            return
        old = _json_dict_or_none(jpath)
        if old is not None and "tensors_sha256" not in old:  # an old save: what the record holds
            mine = {
                "method": self.method,
                "behaviors": list(self.behaviors),
                "sites": [s.to_dict() for s in self.sites],
                "provenance": json_record(self.provenance),
            }
            if all(json.dumps(old.get(k), sort_keys=True) == json.dumps(v, sort_keys=True) for k, v in mine.items()):
                return
        raise FileExistsError(
            errno.EEXIST,
            "holds another attribution result (its attribution.json records other scores or provenance): this "
            "result's tables (scores.csv, heatmap.png) are never written beside it, not even with overwrite=True "
            "(Attribution.load there gives the other result); write them into this result's own folder "
            "(res.save(folder) first) or another folder",
            str(d),
        )

    def _payload(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors and metadata :meth:`save` writes to ``attribution.safetensors``."""
        tensors = {"scores": self.scores.contiguous()}
        for beh, per_site in self.vectors.items():
            for site, v in per_site.items():
                tensors[f"vec/{beh}/{site}"] = v.detach().to("cpu", torch.float32).contiguous()
        labels = labels_checksum(self.method, self.behaviors, [s.to_dict() for s in self.sites])
        return tensors, {"format": TENSORS_FORMAT, "labels_sha256": labels}

    def _saved_in(self, d: Path, tensors_sha: str | None = None) -> bool:
        """Whether ``d/attribution.json`` is this result's: it records these tensors (their
        checksum) and this provenance."""
        jpath = d / "attribution.json"
        if not jpath.is_file():
            return False
        if tensors_sha is None:
            tensors_sha = payload_checksum(*self._payload())
        try:
            old = json.loads(jpath.read_text(encoding="utf-8"))
            if not isinstance(old, dict) or old.get("tensors_sha256") != tensors_sha:
                return False
            # compared as written (json_record: a NaN in a provenance is null there)
            mine = json_record(self.provenance)
            return json.dumps(old.get("provenance"), sort_keys=True) == json.dumps(mine, sort_keys=True)
        except (OSError, ValueError, TypeError):
            return False

    @checked_arguments
    def save(self, directory: str | Path, *, overwrite: bool = False, keep_partial: bool = False) -> Path:
        """Write ``attribution.json`` + ``attribution.safetensors`` atomically into ``directory``.

        A folder holding another finished result (an ``attribution.json`` of other scores or labels)
        is refused with ``FileExistsError`` naming it unless ``overwrite=True`` (saving the same
        result again is always fine); overwriting removes that result's other files first
        (``scores.csv``, ``heatmap.png`` and what its run wrote into ``partial/``, which describe the
        old result: the folder was left mixed, H7-API9; the tables stay when the old result holds the
        same scores, steering vectors and labels, H18-APITAB). Only those: anything else in ``partial/``
        is kept (:func:`~lrm_interp.attribution.resume.clear_partials`; the whole folder was
        deleted, H8-PT), and a live run there is refused. ``keep_partial``: keep ``partial/`` (the
        run that wrote it saves its own result: :func:`~lrm_interp.attribute`). A ``directory`` that is a file, or
        lies under one, raises ``ValueError`` naming it before anything is written; so does a folder
        holding a finished result of another kind (a study folder: it was then taken for an
        attribution result, H9-MIX), whatever ``overwrite`` says
        (:class:`~lrm_interp._io.OtherResultError`, :func:`~lrm_interp._io.check_out_folder`).

        The safetensors file carries the SHA-256 of its payload (scores, steering vectors) in its
        metadata and ``attribution.json`` repeats it (``tensors_sha256``), so :meth:`load` refuses a
        changed file and a pair of files from two different saves. The labels of the scores (method,
        behaviours, site records) are checksummed too (``labels_sha256``, in both files), so
        swapping two site names in ``attribution.json`` is refused rather than relabelling scores.

        Scores that are not finite (NaN, inf: changed in place after the result was made) raise
        ``ValueError`` naming the behaviour and site of the first, before anything is written (every
        reader refuses them: :func:`check_finite_scores`, the check :meth:`load` runs)."""
        d = check_out_folder(directory, "directory")
        try:
            check_finite_scores(self.scores, self.behaviors, self.site_names)
        except ValueError as e:
            raise ValueError(f"directory {d}: not saved: {e}") from None
        tensors, tmeta = self._payload()
        labels = tmeta["labels_sha256"]
        self._replace_other_result(d, payload_checksum(tensors, tmeta), overwrite=overwrite, keep_partial=keep_partial)
        d.mkdir(parents=True, exist_ok=True)
        write_safetensors(d / "attribution.safetensors", tensors, tmeta)
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "behaviors": list(self.behaviors),
            "sites": [s.to_dict() for s in self.sites],
            "tensors_sha256": payload_checksum(tensors, tmeta),
            "labels_sha256": labels,
            "provenance": json_record(self.provenance),
        }
        meta["provenance_sha256"] = provenance_checksum(meta["provenance"])  # an edit is refused (H22-PROV)
        atomic_write_text(d / "attribution.json", json.dumps(meta, indent=2, allow_nan=False))
        return d

    def _replace_other_result(self, d: Path, tensors_sha: str, *, overwrite: bool, keep_partial: bool) -> None:
        """Refuse (``overwrite=False``) or clear (``overwrite=True``) a finished result in ``d`` that is
        not this one: its ``attribution.json`` records other tensors (or cannot be read)."""
        if not (d / "attribution.json").is_file() or self._saved_in(d, tensors_sha):
            return
        if not overwrite:
            raise FileExistsError(
                errno.EEXIST,
                "holds another finished attribution result: not replaced (pass overwrite=True to replace it, "
                "or choose another folder)",
                str(d),
            )
        from lrm_interp.attribution.resume import clear_partials

        if not keep_partial:  # a user's save (not the run's own): never over a folder of another result
            check_overwrite_target(d)  # a study's attribution_fp32/ (H23-SAVESTUDY)
        if not keep_partial:  # a live run there is refused before anything is removed
            # the old run's partials (a resume would mix them with this result); only what a run
            # writes there: anything else in partial/ is kept (it was deleted with it, H8-PT)
            clear_partials(d / "partial")
        if self._recorded_tensors(d) == tensors_sha:  # the same scores and labels: its tables still describe
            return  # them (a rerun of the same run, its provenance's free memory changed, H18-APITAB)
        for name in _TABLES:  # the old result's tables: never left beside the new one
            p = d / name
            if p.is_file() and not p.is_symlink():
                p.unlink()

    @staticmethod
    def _recorded_tensors(d: Path) -> str | None:
        """The ``tensors_sha256`` (scores, steering vectors and labels) ``d/attribution.json`` records, or
        ``None`` (unreadable, none)."""
        try:
            old = json.loads((d / "attribution.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        sha = old.get("tensors_sha256") if isinstance(old, dict) else None
        return sha if isinstance(sha, str) else None

    @classmethod
    @checked_arguments
    def load(cls, directory: str | Path) -> Attribution:
        """Read a folder written by :meth:`save`. A payload that does not match its checksum, or an
        ``attribution.json`` written with another ``attribution.safetensors``, or labels (method,
        behaviours, site records) changed after saving, raises :class:`~lrm_interp._io.ChecksumError`
        naming the file (folders saved before checksums load unverified). Non-finite, malformed or
        duplicate site records and duplicate behaviours raise ``ValueError`` naming the file, and so
        do tensors that do not fit the records (scores of another shape, a steering vector of a
        behaviour or site the result does not list, or of another size than its site's output):
        a site or behaviour dropped from ``attribution.json`` by hand in a folder without checksums.
        A ``directory`` that is no path (``None``) raises ``TypeError`` saying so (H9-E2)."""
        d = Path(_folder_argument(directory, "directory"))
        # a file said ".../attribution.json/attribution.json is missing" (H28-LOADFILE)
        refuse_file_as_folder(d, "an attribution folder", "attribution.json")
        jpath, tpath = d / "attribution.json", d / "attribution.safetensors"
        for p in (jpath, tpath):
            if not p.exists():
                raise FileNotFoundError(f"{p} is missing: not an Attribution directory")
        # the strict reader of every other record (H11-AJS): a BOM dropped; a key twice, NaN / Infinity refused
        meta = loads_strict(read_text_file(jpath), str(jpath))
        if not isinstance(meta, dict):
            raise ValueError(f"{jpath}: not a JSON object ({type(meta).__name__}): not an attribution result")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{jpath}: unsupported format_version {meta.get('format_version')}")
        tensors, tmeta = read_safetensors(tpath, (TENSORS_FORMAT, None), "attribution result")
        expected, stored = meta.get("tensors_sha256"), tmeta.get(CHECKSUM_KEY)
        if expected is not None and expected != stored:
            raise ChecksumError(
                f"{tpath}: its checksum ({str(stored)[:16]}...) is not the one {jpath.name} recorded "
                f"({str(expected)[:16]}...): the two files come from different saves or one was "
                "changed; save the result again"
            )
        behaviors, sites = _checked_labels(jpath, meta)
        labels = labels_checksum(meta.get("method"), behaviors, meta["sites"])
        for where, recorded in (
            (jpath.name, meta.get("labels_sha256")),
            (tpath.name, tmeta.get("labels_sha256")),
        ):
            if recorded is not None and recorded != labels:
                raise ChecksumError(
                    f"{jpath}: its labels (method, behaviours, site records) do not match the "
                    f"labels_sha256 recorded in {where} ({str(recorded)[:16]}..., labels give "
                    f"{labels[:16]}...): the file was edited after saving and the scores would be "
                    "attached to the wrong sites or behaviours; save the result again"
                )
        recorded = meta.get("provenance_sha256")  # absent in a result saved before it was recorded
        if recorded is not None and recorded != provenance_checksum(meta.get("provenance")):
            raise ChecksumError(
                f"{jpath}: its provenance (settings, model and tokenizer fingerprints, traces) does not match the "
                "provenance_sha256 recorded with it: the file was edited after saving, and compare / protect would "
                "believe the edit; restore it, or attribute again into a new folder"
            )
        vectors = _checked_tensors(jpath, tpath, behaviors, sites, tensors)
        try:
            return cls(
                behaviors=behaviors,
                sites=sites,
                scores=tensors["scores"],
                method=meta["method"],
                vectors=vectors,
                provenance=meta.get("provenance", {}),
                trace_keys=_trace_keys(d, meta.get("provenance")),
            )
        except ValueError as e:  # e.g. non-finite scores: name the file
            raise ValueError(f"{tpath}: {e}") from e


def _trace_keys(directory: Path, provenance: Any) -> dict[str, str] | None:
    """The result's ``trace_keys``: its partials' keys (:func:`trace_content_keys`), ``None`` when
    they are not what the result was computed on (its recorded ``contents_fingerprint`` differs: a
    rerun with ``overwrite=True`` on edited traces was stopped after recomputing some partials, so
    they describe the new traces while the result is the old one) or unknown."""
    keys = trace_content_keys(directory)
    ds = provenance.get("dataset") if isinstance(provenance, dict) else None
    recorded = ds.get("contents_fingerprint") if isinstance(ds, dict) else None
    if keys is not None and recorded is not None and partials_contents_fingerprint(keys) != recorded:
        return None
    return keys


@dataclass(frozen=True)
class ImportanceShift:
    """RI_compressed − RI_original per behaviour and site (paper §4's importance shift)."""

    behaviors: tuple[str, ...]
    sites: tuple[Site, ...]
    delta: torch.Tensor  # [n_behaviors, n_sites] float64, signed
    original: dict[str, Any] = field(default_factory=dict, repr=False)
    compressed: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def decreases(self) -> torch.Tensor:
        """The paper's view: only decreases, as positive magnitudes (increases set to 0)."""
        return (-self.delta).clamp_min(0.0)

    def to_dataframe(self):
        pd = _pandas()
        rows = []
        for b, beh in enumerate(self.behaviors):
            for j, s in enumerate(self.sites):
                rows.append(
                    {
                        "behavior": beh,
                        "site": s.name,
                        "layer": s.layer,
                        "kind": s.kind,
                        "delta_ri": float(self.delta[b, j]),
                        "decrease": float(self.decreases[b, j]),
                    }
                )
        return pd.DataFrame(rows)

    def _check_view(self, view: object) -> str:
        """``view`` if it is one of :data:`SHIFT_VIEWS`, else ``ValueError`` naming them: any other
        value showed the signed shift under its own title (``heatmap('decrease')``, H15-SHV)."""
        if isinstance(view, str) and view in SHIFT_VIEWS:
            return view
        hint = (
            " (a behaviour: every behaviour gets its own panel; view picks what they show)"
            if isinstance(view, str) and view in self.behaviors
            else ""
        )
        raise ValueError(
            f"view must be one of {', '.join(map(repr, SHIFT_VIEWS))} (only the RI lost, as positive values; "
            f"the full signed shift), got {shown_value(view)}{hint}"
        )

    def as_attribution(self, view: str = "decreases") -> Attribution:
        """The shift as an :class:`Attribution` whose scores are the decreases (``view="decreases"``)
        or the signed shift (``"signed"``); another ``view`` raises ``ValueError`` (H15-SHV)."""
        view = self._check_view(view)
        vals = self.decreases if view == "decreases" else self.delta
        return Attribution(
            self.behaviors,
            self.sites,
            vals,
            method=f"shift:{view}",
            provenance={"original": self.original, "compressed": self.compressed},
        )

    def heatmap(self, view: str = "decreases", **kw):
        """Layer × kind heatmap of the decreases (``view="decreases"``, default) or the signed shift
        (``"signed"``); another ``view`` raises ``ValueError`` (H15-SHV)."""
        view = self._check_view(view)
        a = self.as_attribution(view)
        from lrm_interp.attribution.plots import grid_heatmaps

        grids = [a.grid(b, "score") for b in self.behaviors]
        return grid_heatmaps(
            grids,
            list(self.behaviors),
            title=kw.pop("title", f"importance shift ({view})"),
            cbar_label="ΔRI" if view != "decreases" else "RI decrease",
            diverging=view != "decreases",
            **kw,
        )

    def largest_decreases(self, k: int = 5, behavior: str | None = None) -> list[tuple[str, str, float]]:
        """``(behaviour, site, decrease)`` of the ``k`` largest RI decreases (one behaviour, or all).

        ``k``: an integer >= 1, else ``ValueError`` (as :meth:`Attribution.top`; the arguments
        swapped failed in a slice, H15-SLW); a ``behavior`` this shift lacks raises ``KeyError``
        naming its behaviours (a typo gave ``[]``, H15-SLD)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            swapped = isinstance(k, str) and k in self.behaviors
            hint = f": did you swap k and behavior? write largest_decreases({behavior!r}, {k!r})" if swapped else ""
            raise ValueError(f"k must be an integer >= 1 (the number of sites to list), got {shown_value(k)}{hint}")
        if behavior is not None and behavior not in self.behaviors:
            raise KeyError(f"behaviour {behavior!r} not in this shift {self.behaviors}")
        rows = [
            (b, s.name, float(self.decreases[i, j]))
            for i, b in enumerate(self.behaviors)
            for j, s in enumerate(self.sites)
            if behavior in (None, b)
        ]
        return sorted(rows, key=lambda r: -r[2])[:k]

    def __repr__(self) -> str:
        # only sites whose RI fell: a 0 (identical results) or an increase printed "−-0.000" (H12-EMPY)
        top = ", ".join(f"{b}/{s} −{d:.3f}" for b, s, d in self.largest_decreases(3) if d > 0) or "none"
        comp = (self.compressed.get("quantization") or self.compressed.get("pruning") or {}) if self.compressed else {}
        what = f", compressed: {comp.get('method', '?')} {comp.get('bits', '')}".rstrip() if comp else ""
        return (
            f"ImportanceShift({len(self.behaviors)} behaviours × {len(self.sites)} sites{what}; "
            f"largest decreases: {top})"
        )

    def _repr_html_(self, k: int = 5) -> str:
        """Jupyter: the largest decreases per behaviour and a diverging heatmap of the signed shift."""
        from lrm_interp.display import box, html_heatmap, html_table

        rows = [
            [b] + [f"{s} (−{d:.3f})" if d > 0 else "" for _, s, d in self.largest_decreases(k, b)]
            for b in self.behaviors
        ]
        table = html_table(
            ["behaviour"] + [f"#{i + 1}" for i in range(min(k, len(self.sites)))],
            rows,
            caption="largest RI decreases (RI_compressed − RI_original < 0)",
        )
        a = self.as_attribution("signed")
        maps = "".join(html_heatmap(*a.grid(b, "score"), title=b, diverging=True) for b in self.behaviors)
        return box("ImportanceShift", table, f"<div>{maps}</div>")

    @checked_arguments
    def write_tables(
        self, directory: str | Path, *, view: str = "decreases", overwrite: bool = False, own: str = "compare"
    ) -> list[Path]:
        """Write ``shift.csv`` (:meth:`to_dataframe`) and ``shift.png`` (:meth:`heatmap` of ``view``) atomically.

        Existing files of those names are replaced only when ``shift.csv`` holds this very shift
        (the table this call writes: the same result written again) or ``overwrite=True``; else
        ``FileExistsError`` names the first, before anything is written (H8-WT). The two files
        make a ``compare`` result (:func:`~lrm_interp._io.finished_result` knows it by the table's
        header, H10-CMP). A folder holding a finished result of another command (an attribution, a
        bench score), and a file of one (a study's ``shift.csv``), are refused whatever
        ``overwrite`` says (:func:`~lrm_interp._io.refuse_other_result_folder`,
        :func:`~lrm_interp._io.refuse_result_file`); ``own``: the kind of result whose files these
        are (``"compare"``; a study writing its own shift files: ``"study"``)."""
        d = Path(_folder_argument(directory, "directory"))
        refuse_other_result_folder(d, own, "directory")
        for name in ("shift.csv", "shift.png"):
            refuse_result_file(d / name, own=own)
        table = self.to_dataframe().to_csv(index=False)
        there = [d / n for n in ("shift.csv", "shift.png") if (d / n).exists() or (d / n).is_symlink()]
        if there and not overwrite:
            try:
                same = (d / "shift.csv").read_bytes() == table.encode("utf-8")
            except OSError:
                same = False
            if not same:
                raise FileExistsError(
                    errno.EEXIST,
                    "exists and is not a table of this importance shift: not replaced (pass overwrite=True to "
                    "replace it, or choose another folder)",
                    str(there[0]),
                )
        atomic_write_text(d / "shift.csv", table)
        return [d / "shift.csv", _save_and_close(self.heatmap(view=view), d / "shift.png")]


def _check_positions(positions: object) -> None:
    """``TypeError`` naming ``positions`` unless it is ``None``, a list / tuple of ints, a ``slice``
    or anything else :func:`~lrm_interp.model.patching.add_to_outputs` reads as a mask (a tensor): a
    string (``"all"``), a single number or a list of other things failed inside the hook (H15-SPS)."""
    fix = "None for every position, a list of token positions such as [0, 5], a slice or a [s] mask tensor"
    refuse_string("positions", positions, "a list of token positions or None", fix=f"positions=None ({fix})")
    if isinstance(positions, (bool, numbers.Number)):
        raise TypeError(f"positions must be {fix}, got {shown_value(positions)}: write positions=[{positions!r}]")
    if isinstance(positions, (list, tuple)):
        bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, numbers.Integral)]
        if bad:
            raise TypeError(
                f"positions must be {fix}; its entry {shown_value(bad[0])} is not a token position (an int)"
            )


def _folder_argument(directory: Any, what: str) -> str | os.PathLike:
    """``directory`` when it is a path (str or ``os.PathLike``, not empty), else ``TypeError`` naming
    ``what`` and what was given (``Attribution.load(None)`` gave pathlib's "expected str, bytes or
    os.PathLike object, not NoneType", H9-E2)."""
    if isinstance(directory, (str, os.PathLike)):
        return path_argument(directory, what)  # "" / "  ": EmptyPathError (a TypeError too)
    raise TypeError(f"{what} must be a folder path (str or os.PathLike), got {directory!r}")


def _json_dict_or_none(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` (unreadable, not JSON, not an object)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _save_and_close(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


#: settings that change what an importance score means: an importance shift between results that
#: differ in one of them mixes the change of method with the change of weights (refused)
COMPARED_SETTINGS = (
    "method",
    "patch_alpha",
    "score",
    "k_context",
    "negatives",
    "weighting",
    "special_tokens",
    "off_by_one",
    "max_tokens",
)
#: settings that compute the same quantity another way (joint approximates exact gradients; the
#: compute dtype rounds differently): the numbers move a little, the meaning does not (warned about)
NUMERIC_SETTINGS = ("mode", "compute_dtype")


def comparability(original: Attribution, compressed: Attribution) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of comparing two :class:`~lrm_interp.attribution.results.Attribution`
    results, each one short clause naming the difference. ``problems`` make an importance shift
    meaningless: different scoring settings (:data:`COMPARED_SETTINGS`), model type, tokenizer or
    traces (counts of traces, spans, tokens). ``notes`` do not: behaviours present in one result only
    (left out of the shift), a different gradient mode or compute dtype (:data:`NUMERIC_SETTINGS`),
    another dataset name, identical weights (a shift of zero by construction). Provenance keys an
    older result lacks are not checked."""
    po, pc = original.provenance or {}, compressed.provenance or {}
    problems: list[str] = []
    notes: list[str] = []

    def differ(a, b) -> bool:
        return a is not None and b is not None and a != b

    so, sc = po.get("settings") or {}, pc.get("settings") or {}
    diff = [f"{k} {so[k]!r} vs {sc[k]!r}" for k in COMPARED_SETTINGS if k in so and k in sc and so[k] != sc[k]]
    if diff:
        problems.append("different attribution settings: " + ", ".join(diff))
    diff = [f"{k} {so[k]!r} vs {sc[k]!r}" for k in NUMERIC_SETTINGS if k in so and k in sc and so[k] != sc[k]]
    if diff:
        notes.append("computed another way (same quantity, slightly different numbers): " + ", ".join(diff))
    mo, mc = po.get("model") or {}, pc.get("model") or {}
    swapped = swapped_compression(mo, mc)
    if swapped:  # the 3-bit copy given as the original: every sign inverted (H8-CR1)
        problems.append(f"the original is {swapped} and the compressed is not: did you swap original and compressed?")
    if differ(mo.get("model_type"), mc.get("model_type")):
        problems.append(f"different models: model_type {mo['model_type']!r} vs {mc['model_type']!r}")
    to, tc = (mo.get("tokenizer") or {}).get("fingerprint"), (mc.get("tokenizer") or {}).get("fingerprint")
    if differ(to, tc):
        problems.append(f"different tokenizers (fingerprints {to} vs {tc}): the behaviour spans are other tokens")
    co, cc = po.get("counts") or {}, pc.get("counts") or {}
    for key, what in (("traces", "traces"), ("spans", "spans per behaviour"), ("tokens", "span tokens per behaviour")):
        a, b = co.get(key), cc.get(key)
        if isinstance(a, dict) and isinstance(b, dict):  # per behaviour: only the behaviours both scored
            a, b = ({k: v for k, v in d.items() if k in a and k in b} for d in (a, b))
        if differ(a, b):
            problems.append(f"different traces: {what} {a} vs {b}")
            break
    else:  # same counts: the same content? (the partial keys fingerprint each trace's text and spans)
        ko, kc = original.trace_keys, compressed.trace_keys
        if ko and kc:
            common = sorted(set(ko) & set(kc))
            edited = [k for k in common if ko[k] != kc[k]]
            if edited:
                problems.append(
                    f"different traces: {len(edited)} of {len(common)} traces share an id but differ in content "
                    f"(prompt, response or spans; first: partial {edited[0]})"
                )
        elif _contents_fp(po) and _contents_fp(pc) and _contents_fp(po) != _contents_fp(pc):
            problems.append(  # no partials to name them: the recorded contents' fingerprints (H21-ATTDATA)
                "different traces: the same ids and counts, but other contents (prompt, response or spans; "
                f"contents_fingerprint {_contents_fp(po)} vs {_contents_fp(pc)})"
            )
    fo, fc = mo.get("config_fingerprint"), mc.get("config_fingerprint")
    if differ(fo, fc):
        sizes = (
            f", {mo['n_params']} vs {mc['n_params']} parameters"
            if mo.get("n_params") is not None and mc.get("n_params") is not None
            else ""
        )
        problems.append(
            f"different model configs (config_fingerprint {fo} vs {fc}{sizes}): not a compressed copy of the "
            "same model (compression changes the weights, never the config)"
        )
    only_o = [b for b in original.behaviors if b not in compressed.behaviors]
    only_c = [b for b in compressed.behaviors if b not in original.behaviors]
    if only_o or only_c:
        notes.append(
            "behaviours left out of the shift (in one result only): "
            + "; ".join(f"{w} {', '.join(bs)}" for w, bs in (("--original", only_o), ("--compressed", only_c)) if bs)
        )
    do, dc = (po.get("dataset") or {}).get("name"), (pc.get("dataset") or {}).get("name")
    same_traces = (bool(original.trace_keys) and original.trace_keys == compressed.trace_keys) or (
        _contents_fp(po) is not None and _contents_fp(po) == _contents_fp(pc)
    )
    if differ(do, dc) and not same_traces:  # one file under two names (a link, a copy) is no difference (H17-SYM)
        notes.append(f"different dataset names {do!r} vs {dc!r}")
    wo, wc = mo.get("weights_fingerprint"), mc.get("weights_fingerprint")
    if wo is not None and wo == wc:
        if problems:  # other traces or settings on the same weights: the shift is theirs, not zero
            notes.append(
                "both results come from the same weights: the shift measures only the differences above "
                "(traces or settings), not a compression"
            )
        elif any(n.startswith("computed another way") for n in notes):
            notes.append("both results come from the same weights: the shift is only the numeric difference above")
        elif same_traces:
            notes.append("both results come from the same weights and traces: the shift is zero by construction")
        else:
            notes.append(
                "both results come from the same weights: the shift is zero by construction when the traces "
                "are the same (their content could not be checked: an older result without its partial/ folder)"
            )
    return problems, notes


def _contents_fp(provenance: dict[str, Any]) -> str | None:
    """The recorded fingerprint of a result's traces' contents (``provenance.dataset.contents_fingerprint``)."""
    ds = provenance.get("dataset")
    fp = ds.get("contents_fingerprint") if isinstance(ds, dict) else None
    return fp if isinstance(fp, str) and fp else None


def _as_attribution(x: Any, name: str) -> Attribution:
    """``x`` itself, or the result folder ``x`` (a path) loaded: ``compare("A", "B")`` said
    "'str' object has no attribute ..." (H7-API2); anything else raises ``TypeError`` naming ``name``."""
    import os

    if isinstance(x, Attribution):
        return x
    if isinstance(x, (str, os.PathLike)):
        return Attribution.load(Path(path_argument(x, name)))  # "" was the current folder (H12-EMPY)
    raise TypeError(f"{name} must be an Attribution (or its result folder), got {type(x).__name__}")


@checked_arguments
def compare(
    original: Attribution | str | os.PathLike, compressed: Attribution | str | os.PathLike, *, strict: bool = True
) -> ImportanceShift:
    """Importance shift from ``original`` to ``compressed`` (same site names; the behaviours both hold).
    Each is an :class:`Attribution` or the folder of one (loaded with :meth:`Attribution.load`).

    Results that cannot be compared (:func:`comparability`: other scoring settings, model type,
    tokenizer or traces) raise ``ValueError`` naming each difference; ``strict=False`` compares them
    anyway with a warning each. The notes of :func:`comparability` (behaviours in one result only,
    another gradient mode or dtype, identical weights) are warnings."""
    import warnings

    original = _as_attribution(original, "original")
    compressed = _as_attribution(compressed, "compressed")
    problems, notes = comparability(original, compressed)
    if problems and strict:
        raise ValueError(
            "the two results cannot be compared: "
            + "; ".join(problems)
            + " (attribute both models with the same settings and traces, or pass strict=False)"
        )
    for n in problems + notes:
        warnings.warn(f"compare: {n}", stacklevel=user_stacklevel())
    common_b = [b for b in original.behaviors if b in compressed.behaviors]
    if not common_b:
        raise ValueError("the two results share no behaviour")
    if original.site_names != compressed.site_names:
        missing = set(original.site_names) ^ set(compressed.site_names)
        raise ValueError(f"site sets differ ({len(missing)} names, e.g. {sorted(missing)[:3]})")
    ro = original.ri[[original.behaviors.index(b) for b in common_b]]
    rc = compressed.ri[[compressed.behaviors.index(b) for b in common_b]]
    return ImportanceShift(
        tuple(common_b),
        original.sites,
        rc - ro,
        original=original.provenance.get("model", {}),
        compressed=compressed.provenance.get("model", {}),
    )


def _pandas():
    import pandas as pd  # a core dependency (to_dataframe is core API); imported on first use

    return pd
