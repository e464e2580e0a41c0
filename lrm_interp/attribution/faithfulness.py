"""Is attribution patching faithful? Real activation patching per (behaviour, site) against AtP.

Real patching (the intervention AtP linearises) of site *m* on span *s* of behaviour *c* at scale α::

    ΔL(s, m, α) = L(s | a_m ← a_m + α·û[c, m] at every position of targets(s)) − L(s)

AtP's first-order estimate of it is ``α · |targets(s)| · dot(s, m)`` with
``dot(s, m) = û[c, m] · mean_{t ∈ targets(s)} ∂L(s)/∂a_t`` (:mod:`lrm_interp.attribution.atp`).
Both are put on the scale of the package's score (``score="paper"``, Eq. 2) before they are
compared, per behaviour, over the sites::

    I_atp[m]     = | Σ_s dot(s, m) | / |D+|                                  (the package's score)
    I_real[m, α] = | Σ_s ΔL(s, m, α) / (α · |targets(s)|) | / |D+|          (the same, measured)

(``score="code"``: ``Σ_s |·| / #spans`` for both). As α → 0, ``I_real → I_atp``. The package's
steering vectors have ``‖û‖ = ‖ā_all‖`` (a full-size patch), so α = 1 is the intervention its
scores describe; smaller α checks only the linearisation.

Fast path (:func:`patching_effects`): the patch changes nothing before the span's first target
position, so one no-grad forward per trace caches every prefix's keys/values
(:func:`~lrm_interp.model.prefix_cache.trace_cache`) and each span re-runs only its window
``[start − 1, end)``, one batch row per (α, site) patched, against that cache. Models whose cache
cannot be cut this way (:func:`~lrm_interp.model.prefix_cache.cache_support`) run the full prefix
``ids[:end]`` per batch instead; ``provenance["path"]`` says which ran.

:func:`atp_faithfulness` is the whole check on a model and traces: the attribution plan
(tokenization, context and ``max_tokens`` truncation, skipped spans counted), the steering vectors
from every trace, a seeded sample of at most ``max_spans`` usable spans per behaviour (how many were
used and left out is reported), AtP dots and real effects on exactly those spans, and the comparison
(Spearman ρ, top-k overlap, |I_atp − I_real| summaries) → :class:`FaithfulnessResult`.

The correction (``lrm_interp.attribute(..., method="patching", patch_alpha=α)``): I_real at one α
as the score itself, every scorable span of every trace patched, resumable per trace
(:func:`patching_trace_stats`, aggregated by :func:`~lrm_interp.attribution.atp.aggregate_spans`
like AtP's dots). docs/method.md, "The correction", has its cost and when to use it. The patching
code itself (:func:`patching_effects`, :func:`real_per_span`, :func:`patching_trace_stats`) lives in
:mod:`lrm_interp.attribution.atp`, beside AtP, so that ``attribute`` can use it without importing
this module (which imports the pipeline); it is re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lrm_interp import __version__
from lrm_interp._io import (
    atomic_write_text,
    check_out_dir,
    move_together,
    path_argument,
    publish_dir,
    refuse_file_as_folder,
    stage_folder,
)
from lrm_interp.attribution.atp import (  # the real patching lives beside AtP; re-exported here
    PATCH_BATCH,
    PatchingEffects,
    aggregate_spans,
    atp_trace_stats,
    check_alphas,
    low_precision_note,
    patching_dtype,
    patching_effects,
    patching_trace_stats,
    real_per_span,
    unresolved_sites,
)
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.attribution.pipeline import dom_stage, live_behaviors, plan_attribution, reduce_dom
from lrm_interp.attribution.stats import spearman
from lrm_interp.checks import check_int, check_seed, checked_arguments, user_stacklevel
from lrm_interp.data.tokens import EncodedTrace

#: ``format`` of ``faithfulness.json``.
FORMAT = "lrm_interp.faithfulness/1"
#: Files :meth:`FaithfulnessResult.save` writes (``faithfulness.json`` marks the folder as a result).
FILES = ("faithfulness.json", "faithfulness.csv", "sites.csv")


# --------------------------------------------------------------------------- comparison
def top_k_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> int:
    """Sites among the ``k`` largest of both ``a`` and ``b`` (``[n_sites]``; ties broken by site order)."""
    k = min(k, a.numel())
    ta = set(torch.argsort(-a.double(), stable=True)[:k].tolist())
    tb = set(torch.argsort(-b.double(), stable=True)[:k].tolist())
    return len(ta & tb)


@dataclass(frozen=True)
class FaithfulnessRow:
    """One (α, behaviour) comparison of the package's AtP score with real patching over the sites.

    ``spearman``: ρ(I_atp, I_real); ``top_k_overlap``: |top-k(I_atp) ∩ top-k(I_real)|;
    ``signed_spearman``: ρ of the signed sums α·Σ_s |targets(s)|·dot vs Σ_s ΔL (the quantity of
    ``tests/test_atp.py::atp_vs_patching``); ``rel_l1``: Σ_m |I_atp − I_real| / Σ_m I_real;
    ``median_ratio``: median over sites of I_atp / I_real (1 = AtP's magnitudes right);
    ``n_spans``, ``n_traces``: spans and traces (|D+|) compared; ``unresolved_sites``: sites whose
    patch changed no span loss at this α (every ΔL exactly 0: below the resolution of the model's
    activations, so their I_real are ties at 0 and the ρ / overlap rest on the other sites;
    ``None`` in a result saved before it was counted).
    """

    alpha: float
    behavior: str
    spearman: float
    top_k_overlap: int
    signed_spearman: float
    rel_l1: float
    median_ratio: float
    n_spans: int
    n_traces: int
    unresolved_sites: int | None = None


def check_top_k(top_k: int, n_sites: int) -> None:
    """Refuse a top-k overlap that cannot tell rankings apart: with ``top_k >= n_sites`` both top-k
    sets are every site, so the overlap is ``n_sites/n_sites`` whatever the scores."""
    if top_k >= n_sites:
        raise ValueError(
            f"--top-k (top_k) {top_k} is not below the {n_sites} site(s) scored: the top-{top_k} overlap "
            f"would be {n_sites}/{n_sites} whatever the scores; use a --top-k below {n_sites}"
        )


def compare_scores(
    effects: PatchingEffects, dots: dict[str, torch.Tensor], *, score: str = "paper", top_k: int = 10
) -> tuple[list[FaithfulnessRow], torch.Tensor, torch.Tensor]:
    """Compare AtP dots with real patching on the same spans.

    Args:
        effects: :func:`patching_effects` of the spans.
        dots: behaviour → ``[n_spans, n_sites]`` AtP dots of the same spans, same order
            (``atp_trace_stats``' ``dots/<b>``).
        score: the package's aggregation (``"paper"`` / ``"code"``).
        top_k: k of the top-k overlap.

    Returns:
        ``(rows, atp [n_behaviors, n_sites], real [n_alphas, n_behaviors, n_sites])``, one row per
        (α, behaviour) in that order.
    """
    check_int("top_k", top_k, min=1)
    nb, ns = len(effects.behaviors), len(effects.site_names)
    check_top_k(top_k, ns)
    atp = torch.zeros(nb, ns, dtype=torch.float64)
    real = torch.zeros(len(effects.alphas), nb, ns, dtype=torch.float64)
    rows = []
    for bi, b in enumerate(effects.behaviors):
        d = dots[b].double()
        if d.shape != effects.effects[b].shape[1:]:
            raise ValueError(
                f"behaviour {b!r}: AtP dots {tuple(d.shape)} do not match effects {tuple(effects.effects[b].shape[1:])}"
            )
        nt = effects.n_traces(b)
        atp[bi] = aggregate_spans(d, nt, score=score)
        for ai, alpha in enumerate(effects.alphas):
            real[ai, bi] = aggregate_spans(
                real_per_span(effects.effects[b][ai], effects.n_targets[b], alpha), nt, score=score
            )
            est_signed = alpha * (effects.n_targets[b].double().unsqueeze(1) * d).sum(0)
            ratio = atp[bi] / real[ai, bi].clamp_min(1e-300)
            rows.append(
                FaithfulnessRow(
                    alpha=alpha,
                    behavior=b,
                    spearman=spearman(atp[bi], real[ai, bi]),
                    top_k_overlap=top_k_overlap(atp[bi], real[ai, bi], top_k),
                    signed_spearman=spearman(est_signed, effects.effects[b][ai].sum(0)),
                    rel_l1=float((atp[bi] - real[ai, bi]).abs().sum() / real[ai, bi].sum().clamp_min(1e-300)),
                    median_ratio=float(ratio.median()) if ns else float("nan"),
                    n_spans=int(d.shape[0]),
                    n_traces=nt,
                    unresolved_sites=unresolved_sites(effects.effects[b][ai]),
                )
            )
    return rows, atp, real


# --------------------------------------------------------------------------- result
def _json_float(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _float_or_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """SHA-256 of the rows as :meth:`FaithfulnessResult.to_dict` writes them (canonical JSON): the
    digest ``rows_sha256`` that the development version before ``record_sha256`` wrote (H21-FEDIT2;
    still checked in such a file)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, allow_nan=False).encode("utf-8")).hexdigest()


DIGEST_KEYS = ("record_sha256", "rows_sha256")
"""The keys of :meth:`FaithfulnessResult.to_dict` that hold digests, left out of :func:`record_digest`."""


def record_digest(d: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a :meth:`FaithfulnessResult.to_dict` record without its
    digest keys (:data:`DIGEST_KEYS`): axes (``behaviors``, ``site_names``, ``alphas``), ``top_k``,
    ``rows``, ``atp``, ``real`` and ``provenance``. The record of what ``faithfulness`` measured,
    including what its arrays cannot vouch for: which site a column is (swapped ``site_names``
    relabel the per-site scores without contradicting any row, H22-FSITES), the provenance, and the
    row fields computed from per-span values that are not stored (H21-FEDIT2). ``TypeError`` /
    ``ValueError`` for a record that is not JSON."""
    body = {k: v for k, v in d.items() if k not in DIGEST_KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FaithfulnessResult:
    """AtP vs real activation patching per (α, behaviour) (:func:`atp_faithfulness`).

    Attributes:
        behaviors, site_names, alphas: the axes.
        rows: one :class:`FaithfulnessRow` per (α, behaviour), α outer.
        atp: ``[n_behaviors, n_sites]`` float64, I_atp (the package's score on the spans used).
        real: ``[n_alphas, n_behaviors, n_sites]`` float64, I_real (module docs).
        top_k: k of the overlaps.
        provenance: model (fingerprints), settings, alphas, span counts per behaviour (labelled,
            usable, used, left out by ``max_spans``, dropped), traces, gradient / patching paths.
    """

    behaviors: tuple[str, ...]
    site_names: tuple[str, ...]
    alphas: tuple[float, ...]
    rows: tuple[FaithfulnessRow, ...]
    atp: torch.Tensor
    real: torch.Tensor
    top_k: int = 10
    provenance: dict = field(default_factory=dict)

    def row(self, behavior: str, alpha: float) -> FaithfulnessRow:
        """The comparison of ``behavior`` at ``alpha``."""
        for r in self.rows:
            if r.behavior == behavior and r.alpha == alpha:
                return r
        raise KeyError(f"no row for behaviour {behavior!r} at alpha {alpha} (alphas {list(self.alphas)})")

    @property
    def warnings(self) -> list[str]:
        """What makes rows say less than they seem: real patching in a 16-bit dtype with α < 1
        (:func:`~lrm_interp.attribution.atp.low_precision_note`, from ``provenance["patching_dtype"]``),
        then one line per (α, behaviour) row whose real patching resolved only some sites
        (``unresolved_sites`` > 0): its Spearman and overlap rest on fewer sites than it says."""
        note = low_precision_note(self.provenance.get("patching_dtype"), self.alphas)
        out = [] if note is None else [note]
        n = len(self.site_names)
        for r in self.rows:
            if r.unresolved_sites:
                out.append(
                    f"alpha={r.alpha:g} {r.behavior}: the patch changed no span loss at {r.unresolved_sites} of {n} "
                    f"sites (every effect exactly 0, below the resolution of the model's activations): their real "
                    f"scores are ties at 0 and the spearman / top-{self.top_k} overlap rest on the other "
                    f"{n - r.unresolved_sites}; use a larger alpha"
                )
        return out

    def to_dataframe(self) -> Any:
        """One row per (α, behaviour): spearman, top-k overlap, signed spearman, rel_l1, median ratio, counts
        (spans, traces, unresolved sites)."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(r) for r in self.rows]).rename(
            columns={"top_k_overlap": f"top{self.top_k}_overlap"}
        )

    def sites_dataframe(self) -> Any:
        """One row per (behaviour, site): ``atp`` and ``real_alpha=<α>`` for each α."""
        import pandas as pd

        recs = []
        for bi, b in enumerate(self.behaviors):
            for j, s in enumerate(self.site_names):
                rec: dict[str, Any] = {"behavior": b, "site": s, "atp": float(self.atp[bi, j])}
                for ai, a in enumerate(self.alphas):
                    rec[f"real_alpha={a:g}"] = float(self.real[ai, bi, j])
                recs.append(rec)
        return pd.DataFrame(recs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: axes, rows, score matrices, provenance, and ``record_sha256`` (:func:`record_digest`
        of the rest, checked by :meth:`from_dict`)."""
        rows = [
            {k: _json_float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(r).items()}
            for r in self.rows
        ]
        d: dict[str, Any] = {
            "format": FORMAT,
            "behaviors": list(self.behaviors),
            "site_names": list(self.site_names),
            "alphas": list(self.alphas),
            "top_k": self.top_k,
            "rows": rows,
            "atp": self.atp.tolist(),
            "real": self.real.tolist(),
            "provenance": self.provenance,
        }
        d["record_sha256"] = record_digest(d)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "faithfulness result") -> FaithfulnessResult:
        """The result of :meth:`to_dict` ``d``, its rows checked against its own score matrices
        (:meth:`check_rows`: ``ValueError`` naming ``source`` for an edited or corrupt record), then
        against its digest ``record_sha256`` (:func:`record_digest`: any other edit, swapped
        ``site_names`` or an edited provenance included, H22-FSITES; a file with only the rows'
        ``rows_sha256`` has that checked, one with neither loads as before)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"not a faithfulness result (format {d.get('format')!r}, expected {FORMAT!r})")
        rows = tuple(
            FaithfulnessRow(
                alpha=float(r["alpha"]),
                behavior=str(r["behavior"]),
                spearman=_float_or_nan(r["spearman"]),
                top_k_overlap=int(r["top_k_overlap"]),
                signed_spearman=_float_or_nan(r["signed_spearman"]),
                rel_l1=_float_or_nan(r["rel_l1"]),
                median_ratio=_float_or_nan(r["median_ratio"]),
                n_spans=int(r["n_spans"]),
                n_traces=int(r["n_traces"]),
                unresolved_sites=None if r.get("unresolved_sites") is None else int(r["unresolved_sites"]),
            )
            for r in d["rows"]
        )
        res = cls(
            tuple(d["behaviors"]),
            tuple(d["site_names"]),
            tuple(float(a) for a in d["alphas"]),
            rows,
            torch.tensor(d["atp"], dtype=torch.float64).reshape(len(d["behaviors"]), len(d["site_names"])),
            torch.tensor(d["real"], dtype=torch.float64).reshape(
                len(d["alphas"]), len(d["behaviors"]), len(d["site_names"])
            ),
            int(d["top_k"]),
            d.get("provenance") or {},
        )
        res.check_rows(source)  # the fields its arrays vouch for, named one by one
        # the whole record's digest (H22-FSITES); a development-version file has only the rows'
        # (H21-FEDIT2); a file saved before either loads as before
        checks = (
            ("record_sha256", "record is not the one", lambda: record_digest(d)),
            ("rows_sha256", "rows are not the ones", lambda: rows_digest(d["rows"])),
        )
        for key, what, digest_of in checks:
            digest = d.get(key)
            if digest is None:
                continue
            try:
                same = digest == digest_of()
            except (TypeError, ValueError):
                same = False
            if not same:
                raise ValueError(
                    f"{source} is edited or corrupt: its {what} it was saved with ({key} differs); "
                    "recompute it (lrm-interp faithfulness --overwrite)"
                )
            break  # the newest digest present vouches for the record
        return res

    def check_rows(self, source: str = "faithfulness result") -> None:
        """Refuse (``ValueError`` naming ``source``, the row and both values: "edited or corrupt")
        rows that their own score matrices contradict: ``top_k`` below 1, a ``top_k_overlap``
        outside ``[0, min(top_k, n_sites)]``, a row of no (α, behaviour) of the axes, or a
        ``spearman`` / ``top_k_overlap`` / ``rel_l1`` / ``median_ratio`` other than the one
        recomputed from ``atp`` and ``real`` (:func:`compare_scores`' formulas). An edited
        ``faithfulness.json`` used to load as it was (H20-FEDIT: ``top_k`` 3 with an overlap of 10,
        a spearman of -0.5 where its arrays give 0.986). The rows must be one per (α, behaviour);
        the fields computed from per-span values, which are not stored, are bounded: ``n_traces``
        ≤ ``n_spans``, the same at every α; ``unresolved_sites`` at most the sites whose real score
        is 0; ``signed_spearman`` in [-1, 1] (H21-FEDIT2; :meth:`from_dict` also checks the rows'
        digest ``record_sha256``, which also covers the axes and the provenance, H22-FSITES)."""
        bad = f"{source} is edited or corrupt"
        if self.top_k < 1:
            raise ValueError(f"{bad}: top_k {self.top_k} is below 1")
        cap = min(self.top_k, len(self.site_names))
        cells = [(r.alpha, r.behavior) for r in self.rows]
        want_cells = [(al, b) for al in self.alphas for b in self.behaviors]
        if sorted(cells, key=repr) != sorted(want_cells, key=repr):  # a row removed or twice (H21-FEDIT2)
            missing = [c for c in want_cells if c not in cells]
            twice = sorted({c for c in cells if cells.count(c) > 1}, key=repr)
            raise ValueError(f"{bad}: its rows are not one per alpha × behaviour (missing {missing}, twice {twice})")
        for r in self.rows:
            name = f"row alpha={r.alpha:g} {r.behavior!r}"
            if r.behavior not in self.behaviors or r.alpha not in self.alphas:
                raise ValueError(
                    f"{bad}: {name} is not one of its behaviours {list(self.behaviors)} × alphas {list(self.alphas)}"
                )
            if not 0 <= r.top_k_overlap <= cap:
                raise ValueError(
                    f"{bad}: {name} has top_k_overlap {r.top_k_overlap}, outside [0, {cap}] for top_k "
                    f"{self.top_k} and {len(self.site_names)} sites"
                )
            a = self.atp[self.behaviors.index(r.behavior)]
            real = self.real[self.alphas.index(r.alpha), self.behaviors.index(r.behavior)]
            ratio = a / real.clamp_min(1e-300)
            # the fields from per-span values (not stored): what the arrays bound (H21-FEDIT2)
            first = next(o for o in self.rows if o.behavior == r.behavior)
            zeros = int(real.eq(0).sum())
            bounds = [
                (0 <= r.n_traces <= r.n_spans, f"n_traces {r.n_traces} and n_spans {r.n_spans} (|D+| ≤ spans)"),
                (
                    (r.n_spans, r.n_traces) == (first.n_spans, first.n_traces),
                    f"n_spans / n_traces {r.n_spans} / {r.n_traces}, but {first.n_spans} / {first.n_traces} at "
                    f"alpha={first.alpha:g} (the same spans at every alpha)",
                ),
                (
                    r.unresolved_sites is None or 0 <= r.unresolved_sites <= zeros,
                    f"unresolved_sites {r.unresolved_sites}, but its real scores are 0 at {zeros} site(s) only",
                ),
                (
                    math.isnan(r.signed_spearman) or -1 <= r.signed_spearman <= 1,
                    f"signed_spearman {r.signed_spearman:g}, outside [-1, 1]",
                ),
            ]
            for ok, what in bounds:
                if not ok:
                    raise ValueError(f"{bad}: {name} has {what}; recompute it (lrm-interp faithfulness --overwrite)")
            want = {
                "spearman": spearman(a, real),
                "top_k_overlap": float(top_k_overlap(a, real, self.top_k)),
                "rel_l1": float((a - real).abs().sum() / real.sum().clamp_min(1e-300)),
                "median_ratio": float(ratio.median()) if len(self.site_names) else float("nan"),
            }
            for k, w in want.items():
                v = float(getattr(r, k))
                same = (math.isnan(v) and math.isnan(w)) or math.isclose(v, w, rel_tol=1e-9, abs_tol=1e-12)
                if not same:
                    raise ValueError(
                        f"{bad}: {name} has {k} {v:g}, but its atp / real arrays give {w:g}; "
                        "recompute it (lrm-interp faithfulness --overwrite)"
                    )

    @checked_arguments
    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``faithfulness.json`` (everything), ``faithfulness.csv`` (:meth:`to_dataframe`) and
        ``sites.csv`` (:meth:`sites_dataframe`) to ``out_dir``, published together.

        A non-empty ``out_dir`` is refused unless ``overwrite`` and it holds an earlier result
        (``faithfulness.json``): never another folder's files. The three files are written into a
        hidden folder first, which then becomes ``out_dir`` (a new folder: one rename, never over
        a folder that appeared meanwhile: ``FileExistsError``) or whose files replace the earlier
        result's in one go, the record last, with Ctrl-C and SIGTERM held back meanwhile: the
        folder is never a mix of two results (they used to be written one after another).
        """
        out = check_out_dir(out_dir, overwrite=overwrite, marker=FILES[0])
        new = not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir()))
        with stage_folder(out, beside=new) as stage:
            atomic_write_text(stage / FILES[1], self.to_dataframe().to_csv(index=False))
            atomic_write_text(stage / FILES[2], self.sites_dataframe().to_csv(index=False))
            atomic_write_text(stage / FILES[0], json.dumps(self.to_dict(), indent=1))
            if new:
                publish_dir(stage, out, replace=False)
            else:
                move_together(stage, out, (FILES[1], FILES[2], FILES[0]))
        return out

    @classmethod
    @checked_arguments
    def load(cls, out_dir: str | os.PathLike) -> FaithfulnessResult:
        """Read a folder written by :meth:`save`; its rows are checked against its score matrices
        (:meth:`check_rows`: ``ValueError`` naming the file for an edited or corrupt one)."""
        refuse_file_as_folder(path_argument(out_dir, "out_dir"), "a faithfulness folder", FILES[0])  # H28-LOADFILE
        path = Path(path_argument(out_dir, "out_dir")) / FILES[0]
        if not path.is_file():  # a raw "[Errno 2] No such file or directory" (H29-FLOADMSG)
            where = "does not exist" if not path.parent.exists() else f"holds no {FILES[0]}"
            raise FileNotFoundError(
                f"{path.parent} {where}: not a faithfulness folder (lrm-interp faithfulness --out writes one)"
            )
        return cls.from_dict(json.loads(path.read_text()), source=str(path))

    def __repr__(self) -> str:
        head = f"{len(self.behaviors)} behaviours × {len(self.site_names)} sites, alphas {list(self.alphas)}"
        lines = [f"FaithfulnessResult({head})"]
        for r in self.rows:
            lines.append(
                f"  alpha={r.alpha:g} {r.behavior:24s} spearman={r.spearman:.3f} "
                f"top{self.top_k}={r.top_k_overlap}/{min(self.top_k, len(self.site_names))} "
                f"({r.n_spans} spans, {r.n_traces} traces"
                + (f"; {r.unresolved_sites} sites unresolved" if r.unresolved_sites else "")
                + ")"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- the whole check
def select_spans(
    encoded: Sequence[EncodedTrace], behaviors: Sequence[str], max_spans: int | None, *, seed: int = 0
) -> tuple[list[EncodedTrace], dict[str, dict[str, int]]]:
    """Traces restricted to at most ``max_spans`` scorable spans per behaviour (a seeded uniform
    sample, kept in trace order; all of them with ``None``) and per behaviour the counts
    ``{"usable": …, "used": …, "left_out_by_max_spans": …}``. Traces left without a span are dropped."""
    check_int("max_spans", max_spans, min=1, optional=True)
    keep: set[tuple[str, int]] = set()
    counts = {}
    g = torch.Generator().manual_seed(int(seed))
    for b in behaviors:
        cand = [(e.trace_id, s.index) for e in encoded for s in e.spans_of(b) if s.scorable]
        chosen = cand
        if max_spans is not None and len(cand) > max_spans:
            idx = sorted(torch.randperm(len(cand), generator=g)[:max_spans].tolist())
            chosen = [cand[i] for i in idx]
        keep.update(chosen)
        counts[b] = {"usable": len(cand), "used": len(chosen), "left_out_by_max_spans": len(cand) - len(chosen)}
    out = []
    for e in encoded:
        sp = tuple(s for s in e.spans if (e.trace_id, s.index) in keep)
        if sp:
            out.append(dataclasses.replace(e, spans=sp))
    return out, counts


@checked_arguments
def atp_faithfulness(
    model: Any,
    dataset: Any,
    *,
    config: AttributionConfig | None = None,
    tokenizer: Any = None,
    alphas: Sequence[float] | float = (0.1, 1.0),
    max_spans: int | None = None,
    seed: int = 0,
    top_k: int = 10,
    batch_size: int = PATCH_BATCH,
    progress: bool = True,
    **options: Any,
) -> FaithfulnessResult:
    """Compare the package's AtP scores with real activation patching on ``model`` and ``dataset``.

    Args:
        model: an HF causal LM, a local model folder or an alias (as :func:`lrm_interp.attribute`).
        dataset: traces (dataset, list, JSONL path or paper-layout folder).
        config: the attribution settings (:class:`AttributionConfig`; ``max_tokens`` caps the tokens
            per trace, spans cut off are counted); keywords override its fields. ``method`` must be
            ``"attribution"``.
        tokenizer: for a model object without its own.
        alphas: patch scales of the real patching (finite, > 0); α = 1 is the package's full û.
        max_spans: at most this many spans per behaviour (seeded uniform sample; ``None``: all).
            Steering vectors always come from every trace.
        seed: seed of the span sample.
        top_k: k of the top-k overlap.
        batch_size: (α, site) rows per patched forward.
        progress: progress bars.

    Returns:
        :class:`FaithfulnessResult`; ``provenance["spans"][b]`` counts labelled / usable / used /
        left-out spans per behaviour.

    Raises:
        ValueError: a bad alpha (≤ 0, NaN, ±inf), ``method="dom"``, ``top_k`` not below the number
            of sites (a trivially perfect overlap), or a requested behaviour without a usable span.
    """
    cfg = config or AttributionConfig()
    if options:
        cfg = cfg.replace(**options)
    if cfg.method != "attribution":
        raise ValueError(f"method must be 'attribution' to check attribution patching, got {cfg.method!r}")
    alphas = check_alphas(alphas)
    check_int("max_spans", max_spans, min=1, optional=True)
    check_int("top_k", top_k, min=1)
    check_int("batch_size", batch_size, min=1)
    check_seed("seed", seed)
    plan = plan_attribution(model, dataset, cfg, tokenizer=tokenizer, progress=progress, warn=False)
    check_top_k(top_k, len(plan.sites))  # before any scoring
    if cfg.behaviors is not None and plan.absent:
        raise ValueError(
            f"behaviour(s) {plan.absent} have no usable span in the data "
            f"({plan.extra.get('absent_spans')}): nothing to patch"
        )
    dom = reduce_dom(plan, dom_stage(plan, progress=progress))
    live = [b for b in live_behaviors(plan, dom) if b not in plan.absent]
    if not live:
        raise ValueError(f"no behaviour of {plan.behaviors} has a usable span in the data")
    sel, counts = select_spans(plan.encoded, live, max_spans, seed=seed)
    for b in live:
        counts[b]["labelled"] = sum(len(t.spans_of(b)) for t in plan.dataset)
        counts[b]["dropped"] = sum(1 for s in plan.skipped if s["behavior"] == b)
    stats = [
        atp_trace_stats(
            plan.model,
            e,
            plan.sites,
            live,
            dom.vectors,
            mode=cfg.mode,
            off_by_one=cfg.off_by_one,
            gradient_checkpointing=cfg.gradient_checkpointing,
            compute_dtype=cfg.torch_compute_dtype,
            prefix_cache=cfg.prefix_cache,
        )
        for e in tqdm(sel, desc=f"AtP ({cfg.mode})", unit="trace", disable=not progress)
    ]
    dots = {b: torch.cat([st[f"dots/{b}"] for st in stats]) for b in live}
    atp_loss = {b: torch.cat([st[f"loss/{b}"] for st in stats]) for b in live}
    eff = patching_effects(
        plan.model,
        sel,
        plan.sites,
        live,
        dom.vectors,
        alphas=alphas,
        off_by_one=cfg.off_by_one,
        prefix_cache=cfg.prefix_cache,
        batch_size=batch_size,
        compute_dtype=cfg.torch_compute_dtype,
        progress=progress,
    )
    rows, atp, real = compare_scores(eff, dots, score=cfg.score, top_k=top_k)
    loss_gap = max(
        (float((atp_loss[b] - eff.base_loss[b]).abs().max()) for b in live if atp_loss[b].numel()), default=0.0
    )
    prov = {
        "lrm_interp": __version__,
        "model": plan.model_provenance,
        "settings": cfg.to_dict(),
        "alphas": list(alphas),
        "max_spans": max_spans,
        "seed": seed,
        "batch_size": batch_size,
        "n_traces": len(plan.dataset),
        "n_traces_patched": len(sel),
        "n_sites": len(plan.sites),
        "spans": counts,
        "absent_behaviors": plan.absent,
        "overlong": plan.extra.get("overlong"),
        "patching_path": {"path": eff.path, "reason": eff.reason},
        "max_base_loss_gap": loss_gap,  # AtP's unpatched L(s) vs the patching pass's: a consistency check
        # the dtype the patched forwards ran in: a 16-bit one swamps small patches (low_precision_note)
        "patching_dtype": str(patching_dtype(plan.model, cfg.torch_compute_dtype)).removeprefix("torch."),
        "dataset": {"name": plan.dataset.name, "n_traces": len(plan.dataset)},
    }
    res = FaithfulnessResult(tuple(live), eff.site_names, alphas, tuple(rows), atp, real, top_k, prov)
    for w in res.warnings:  # a notebook sees them; the command line prints them as its own warnings
        warnings.warn(w, UnresolvedSitesWarning, stacklevel=user_stacklevel())
    return res


class UnresolvedSitesWarning(UserWarning):
    """Real patching says less than the rows seem to (:attr:`FaithfulnessResult.warnings`): at some α
    it changed no span loss at some sites, or it ran in a 16-bit dtype with α < 1."""


__all__ = [
    "FORMAT",
    "FILES",
    "PatchingEffects",
    "FaithfulnessRow",
    "FaithfulnessResult",
    "check_alphas",
    "PATCH_BATCH",
    "patching_effects",
    "patching_trace_stats",
    "aggregate_spans",
    "real_per_span",
    "top_k_overlap",
    "compare_scores",
    "unresolved_sites",
    "select_spans",
    "atp_faithfulness",
    "UnresolvedSitesWarning",
]
