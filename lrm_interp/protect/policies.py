"""Protection policies: which weights of which sites to keep in FP16 under a budget.

All policies are deterministic; ties go to the earlier site, then the smaller flat index.

- :func:`global_top`: the ``k = round(budget · N)`` most salient weights over all sites
  (``N`` = weights of all sites; ``round`` = nearest integer, halves to even — Python's
  ``round``). Streamed: only a candidate pool of ≤ 2k values lives in memory.
- :func:`per_module_top`: ``round(budget · n_m)`` weights in every module.
- :func:`modules_by_score`: whole modules, best score first (greedy, a module that does
  not fit is skipped and smaller ones may still fit), total ≤ ``budget · N``. Scores: a
  ``{site: score}`` dict or an Attribution (:func:`lrm_interp.attribution.results.site_scores`).
- :func:`final_mlp`: the paper's choice — every MLP linear of the last decoder layer.
- ``always`` / ``never`` regexes (:func:`apply_regexes`, :func:`build_masks`): ``always`` sites
  are protected whole and count against the budget; ``never`` sites get no protection
  (``never`` wins).
- ``granularity="rows"|"cols"`` for the top-k policies: whole rows / input columns ranked by
  summed saliency, greedily while the total stays ≤ ``round(budget · N)`` weights.

A budget above 0 that protects no weight at all is refused (``ValueError`` naming the budget
and the weight count): ``round(budget · N) = 0`` (e.g. ``5e-7`` of a few million weights), no
whole row / column / module fitting in it, or (``per_module_top``) ``round(budget · n_m) = 0``
in every module. A module getting 0 while others get some is normal. ``budget=0`` is the
no-protection baseline and stays allowed. So is a ``never`` regex matching every site with a budget
above 0; ``always`` sites holding more weights than the budget are protected whole, with a
:class:`BudgetExceededWarning` naming their share (:func:`check_always_never`).

:func:`build_masks` is the one entry point by name (:data:`POLICIES`); it returns a
:class:`~lrm_interp.protect.masks.MaskSet` recording the model the masks were computed for (the
saliency stream's model, else the model of an Attribution given as ``scores``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from lrm_interp.attribution.results import site_scores
from lrm_interp.checks import check_fraction, checked_arguments, shown_value, user_stacklevel
from lrm_interp.model.provenance import recorded_weights
from lrm_interp.model.sites import Site, repeated_site_names
from lrm_interp.protect.encoding import check_site_list
from lrm_interp.protect.masks import MaskSet, ProtectionMask


class ZeroScoreWarning(UserWarning):
    """A behaviour of an Attribution has no non-zero score: the mean relative importance over
    behaviours (:func:`module_scores`) counts it as zero everywhere."""


class UnresolvedScoresWarning(ZeroScoreWarning):
    """An Attribution computed by activation patching left sites unresolved for a behaviour used
    (``provenance["counts"]["unresolved_sites"]``: the patch at its ``patch_alpha`` changed no span
    loss there): their scores are ties at 0, and the modules ranked or allocated by them are
    ranked by nothing (H13-UNB). A :class:`ZeroScoreWarning`: a caller that already said it
    silences both at once."""


def unresolved_note(scores: Any, behavior: str | None = None, *, source: str | None = None) -> str | None:
    """The warning of :func:`module_scores` about ``scores``' unresolved sites (``None`` when it
    records none for the behaviours used: ``behavior``, else every behaviour): the count, the
    behaviour, the ``patch_alpha`` and what to do."""
    prov = getattr(scores, "provenance", None)
    counts = prov.get("counts") if isinstance(prov, Mapping) else None
    unresolved = counts.get("unresolved_sites") if isinstance(counts, Mapping) else None
    if not isinstance(unresolved, Mapping) or not isinstance(prov, Mapping):
        return None
    used = [behavior] if behavior is not None else list(getattr(scores, "behaviors", ()))
    bad = {b: n for b in used if isinstance(n := unresolved.get(b), int) and not isinstance(n, bool) and n > 0}
    if not bad:
        return None
    settings = prov.get("settings")
    alpha = settings.get("patch_alpha") if isinstance(settings, Mapping) else None
    n_sites = prov.get("n_sites") or len(getattr(scores, "sites", ()) or ()) or "?"
    where = f" {source}" if source else ""
    per = "; ".join(f"{n} of {n_sites} sites unresolved for behaviour {b!r}" for b, n in bad.items())
    at = f"patch_alpha {alpha:g}" if isinstance(alpha, (int, float)) else "its patch_alpha"
    return (
        f"the attribution scores{where} were computed by patching at {at}, which changed no span loss at some "
        f"sites: {per}; their scores are ties at 0 and rank those modules by nothing; use a larger --patch-alpha "
        "(attribute --method patching --patch-alpha ...)"
    )


def module_scores(
    scores: Any, behavior: str | None = None, *, source: str | None = None, purpose: str = "rank the modules"
) -> dict[str, float]:
    """``{site: score}`` of ``scores`` (:func:`~lrm_interp.attribution.results.site_scores`: a
    mapping, or an Attribution's relative importance of ``behavior`` / the mean over behaviours),
    refusing scores that carry no information about the modules.

    ``ValueError`` when the scores used are all zero: ``behavior``'s row (an all-zero row can be
    saved through the API; a real run gives an absent behaviour no row), every behaviour's row, or
    every value of a mapping. Without ``behavior``, a behaviour whose row alone is zero is named in
    a :class:`ZeroScoreWarning` (the mean counts it as zero). Sites that activation patching left
    unresolved for a behaviour used (recorded by ``attribute(method="patching")``): an
    :class:`UnresolvedScoresWarning` naming the count, the behaviour and the ``patch_alpha``
    (:func:`unresolved_note`; they were used without a word, H13-UNB). ``source`` names the scores in the
    messages (e.g. the result folder); ``purpose`` says what they were for ("nothing to <purpose>
    by")."""
    from lrm_interp.attribution.results import Attribution

    where = f" in {source}" if source else ""
    if isinstance(scores, Attribution):
        ri = scores.ri
        has = [bool((ri[i] > 0).any()) for i in range(len(scores.behaviors))]
        if behavior is not None:
            if behavior in scores.behaviors and not has[scores.behaviors.index(behavior)]:
                raise ValueError(
                    f"behaviour {behavior!r} has no non-zero attribution score{where}: nothing to {purpose} by"
                )
        elif scores.behaviors and not any(has):
            raise ValueError(f"no behaviour has a non-zero attribution score{where}: nothing to {purpose} by")
        elif not all(has):
            import warnings

            zero = [b for b, h in zip(scores.behaviors, has) if not h]
            warnings.warn(
                f"behaviour{'s' * (len(zero) > 1)} {', '.join(map(repr, zero))} "
                f"{'has' if len(zero) == 1 else 'have'} no non-zero attribution score{where}: the mean relative "
                f"importance over behaviours counts {'it' if len(zero) == 1 else 'them'} as zero",
                ZeroScoreWarning,
                stacklevel=user_stacklevel(),
            )
    sc = site_scores(scores, behavior)
    if sc and not any(v != 0 for v in sc.values()):
        raise ValueError(f"every module score{where} is 0: nothing to {purpose} by")
    note = unresolved_note(scores, behavior, source=source) if isinstance(scores, Attribution) else None
    if note is not None:
        import warnings

        warnings.warn(note, UnresolvedScoresWarning, stacklevel=user_stacklevel())
    return sc


def refuse_unscored_sites(scores: Mapping[str, float], sites: Sequence[Site], where: str) -> None:
    """``ValueError`` naming ``where`` and the first of ``sites`` that ``scores`` (``{site: score}``,
    :func:`module_scores`) gives no value: it ranked as 0 (last, never protected) or weighed every
    saliency of it to 0, without a word; scores of another model's names (or ``{}``) ranked every
    module so and protected the first in module order (H33-MBSKEYS; ``allocate_bits`` refuses the
    same)."""
    missing = [s.name for s in sites if s.name not in scores]
    if missing:
        none = " (they score none of them)" if len(missing) == len(sites) else ""
        raise ValueError(
            f"{where}: the scores have no value for {len(missing)} of the {len(sites)} sites{none} (e.g. "
            f"{', '.join(missing[:3])}): they would count as 0; give scores of every site (an Attribution over "
            "these sites, or res.site_ri()), or only the sites they score"
        )


def _check_budget(budget: float) -> float:
    """``float(budget)`` if it is a finite fraction of the weights in [0, 1] (0: protect nothing)."""
    try:
        return check_fraction("budget", budget)
    except ValueError:
        raise ValueError(f"budget must be a fraction of the weights in [0, 1], got {shown_value(budget)}") from None


class _Spread:
    """The smallest and largest saliency value seen (:meth:`add`, one module's unit scores at a time)."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def add(self, v: torch.Tensor) -> None:
        if v.numel():
            self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))

    def constant(self) -> bool:
        """Every value seen is the same (and at least one was seen)."""
        return self.lo == self.hi


def _refuse_uninformative(where: str, sites: Sequence[Site], value: float) -> None:
    """The ``ValueError`` of a saliency that is the same ``value`` for every weight the policy may
    protect (0: an all-zero gradient or activation): the top-k of equal scores is an arbitrary set of
    weights (the first of each module), written as a 2 % mask with no word (H33-ZEROSAL; all-zero
    module scores and sensitivities are refused the same way, :func:`module_scores`, H8-NAN2)."""
    raise ValueError(
        f"{where}: the saliency is {value:g} for every weight of the {len(sites)} sites it may protect: nothing to "
        "rank the weights by (an all-zero gradient or activation, e.g. traces without the behaviour's spans, or a "
        "constant model?); check the saliency's inputs"
    )


def _refuse_nothing(budget: float, n_weights: int, what: str, least: float) -> None:
    """The ``ValueError`` of a budget above 0 that protects no weight (module docs); ``least``:
    a budget that protects something."""
    raise ValueError(
        f"budget {budget:g} of {n_weights} weights protects 0 weights ({what}); use budget=0 for no "
        f"protection, or a budget of at least {least:.3g}"
    )


def _n_total(saliency: Any, n_total: int | None, sites: Sequence[Site] | None) -> tuple[Any, int]:
    if n_total is not None:
        return saliency, int(n_total)
    sites = sites if sites is not None else getattr(saliency, "sites", None)
    if sites is not None:
        return saliency, sum(s.n_weights for s in sites)
    items = list(saliency)  # no way to know N up front: materialised (documented)
    return items, sum(t.numel() for _, t in items)


def _checked(site: Site, sal: torch.Tensor) -> torch.Tensor:
    v = sal.detach().float().cpu()
    if tuple(v.shape) != (site.out_features, site.in_features):
        raise ValueError(
            f"saliency of {site.name} has shape {tuple(v.shape)}, expected [{site.out_features}, {site.in_features}]"
        )
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"saliency of {site.name} has {int((~torch.isfinite(v)).sum())} non-finite values")
    return v


_UNIT = {"elements": "weight", "rows": "row", "cols": "column"}


def _units_of(granularity: str) -> str:
    """``granularity`` if a top-k policy takes it (``ValueError`` otherwise)."""
    if granularity not in ("elements", "rows", "cols"):
        raise ValueError(f"granularity must be elements, rows or cols for top-k policies, got {granularity!r}")
    return granularity


def _units(site: Site, v: torch.Tensor, granularity: str) -> tuple[torch.Tensor, int]:
    """Unit scores and weights per unit (elements: 1; rows: in; cols: out)."""
    if granularity == "elements":
        return v.flatten(), 1
    if granularity == "rows":
        return v.sum(1), site.in_features
    if granularity == "cols":
        return v.sum(0), site.out_features
    raise ValueError(f"granularity must be elements, rows or cols for top-k policies, got {granularity!r}")


def _mask_from_units(site: Site, idx: torch.Tensor, granularity: str) -> ProtectionMask:
    shape = (site.out_features, site.in_features)
    cls = ProtectionMask
    return {"elements": cls.from_indices, "rows": cls.from_rows, "cols": cls.from_cols}[granularity](
        site.name, shape, idx
    )


def global_top(
    saliency: Iterable[tuple[Site, torch.Tensor]],
    budget: float = 0.02,
    *,
    n_total: int | None = None,
    sites: Sequence[Site] | None = None,
    granularity: str = "elements",
    exclude: Iterable[str] = (),
    reserved: int = 0,
) -> dict[str, ProtectionMask]:
    """Exactly ``round(budget · N) − reserved`` most salient weights over all sites.

    Args:
        saliency: yields ``(site, [out, in] tensor)`` one module at a time (streamed).
        budget: fraction of ``N`` to protect. ``N`` is ``n_total``, else the weights of
            ``sites`` or of ``saliency.sites`` (a :class:`~lrm_interp.protect.saliency.SaliencyStream`),
            else the sum of the yielded sizes (the stream is then materialised first).
        granularity: ``elements`` (exact budget), ``rows`` or ``cols`` (greedy ≤ budget).
        exclude: site names that never get protection (their weights still count in N).
        reserved: weights already spent elsewhere (e.g. ``always`` modules).

    Memory: a candidate pool (values + global ids) of at most ``2k`` plus one module.
    """
    budget = _check_budget(budget)
    saliency, N = _n_total(saliency, n_total, sites)
    if budget > 0 and int(round(budget * N)) == 0 and not reserved:
        _refuse_nothing(budget, N, f"round({budget:g} × {N}) = 0", 1 / N)
    k = max(0, int(round(budget * N)) - int(reserved))
    exclude = set(exclude)
    seen: list[tuple[Site, int, int]] = []  # site, first global unit id, weights per unit
    pool_v, pool_i, pool_w = torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    thr: float | None = None
    off = 0
    spread = _Spread()  # the saliency values of the sites that may be protected: all equal ranks nothing
    for site, sal in saliency:
        v, per = _units(site, _checked(site, sal), granularity)
        seen.append((site, off, per))
        if site.name not in exclude:
            spread.add(v)
        if site.name not in exclude and k > 0:
            keep = (v > thr) if thr is not None else torch.ones_like(v, dtype=torch.bool)
            ids = keep.nonzero().flatten()
            pool_v = torch.cat([pool_v, v[ids]])
            pool_i = torch.cat([pool_i, ids + off])
            pool_w = torch.cat([pool_w, torch.full((ids.numel(),), per, dtype=torch.long)])
            if granularity == "elements" and pool_v.numel() > 2 * k:
                pool_v, pool_i, pool_w, thr = _prune(pool_v, pool_i, pool_w, k)
        off += v.numel()
    if 0 < k < N - sum(st.n_weights for st, _, _ in seen if st.name in exclude) and spread.constant():
        # (every weight protected: no ranking needed, H35-CONSTFULL)
        _refuse_uninformative("global_top", [st for st, _, _ in seen if st.name not in exclude], spread.lo)
    if granularity == "elements":
        if pool_v.numel() > k:
            pool_v, pool_i, pool_w, _ = _prune(pool_v, pool_i, pool_w, k)
        chosen = pool_i
    else:  # greedy by score (ties: earlier unit), skip units that overflow the budget
        order = torch.sort(-pool_v, stable=True).indices
        take, used = [], 0
        for j in order.tolist():
            w = int(pool_w[j])
            if used + w <= k:
                take.append(j)
                used += w
        chosen = torch.sort(pool_i[torch.tensor(take, dtype=torch.long)]).values
        if k > 0 and not take and pool_w.numel():
            _refuse_nothing(
                budget,
                N,
                f"{k} weights, fewer than one whole {_UNIT[granularity]} of {int(pool_w.min())} weights",
                int(pool_w.min()) / N,
            )
    out = {}
    for site, start, per in seen:
        n_units = site.n_weights // per
        sel = chosen[(chosen >= start) & (chosen < start + n_units)] - start
        out[site.name] = _mask_from_units(site, sel, granularity)
    return out


def _prune(v: torch.Tensor, i: torch.Tensor, w: torch.Tensor, k: int):
    """Keep the k best of a pool ordered by global id: larger value first, then smaller id."""
    if k == 0:
        return v[:0], i[:0], w[:0], math.inf
    t = float(torch.topk(v, k).values[-1])  # k-th largest value
    gt = v > t
    eq = v == t
    need = k - int(gt.sum())
    keep = gt | (eq & (torch.cumsum(eq.long(), 0) <= need))
    return v[keep], i[keep], w[keep], t


def _per_module_k(site: Site, budget: float, granularity: str) -> int:
    """Units (weights, rows or columns) :func:`per_module_top` protects in ``site``."""
    per = {"elements": 1, "rows": site.in_features, "cols": site.out_features}[granularity]
    return int(round(budget * site.n_weights)) // per


def _per_module_least(site: Site, granularity: str) -> float:
    """A budget that gives ``site`` one unit (weight, row or column) in :func:`per_module_top`."""
    per = {"elements": 1, "rows": site.in_features, "cols": site.out_features}[granularity]
    return per / site.n_weights


def per_module_top(
    saliency: Iterable[tuple[Site, torch.Tensor]],
    budget: float = 0.02,
    *,
    granularity: str = "elements",
    exclude: Iterable[str] = (),
) -> dict[str, ProtectionMask]:
    """``round(budget · n_m)`` weights of every module (rows/cols: greedy ≤ that many weights)."""
    budget = _check_budget(budget)
    _units_of(granularity)
    exclude = set(exclude)
    why = (
        f"round({budget:g} × n) = 0 in every module"
        if granularity == "elements"
        else f"round({budget:g} × n) is less than one whole {_UNIT[granularity]} in every module"
    )
    known = [s for s in getattr(saliency, "sites", None) or () if s.name not in exclude]
    if budget > 0 and known and all(_per_module_k(s, budget, granularity) == 0 for s in known):
        _refuse_nothing(
            budget,
            sum(s.n_weights for s in known),
            f"{why}, the largest having {max(s.n_weights for s in known)} weights",
            min(_per_module_least(s, granularity) for s in known),
        )
    out = {}
    free: list[Site] = []
    n_taken = 0
    spread = _Spread()  # as in global_top
    ranked = False  # a module whose units it ranks differ: each module's choice is its own (H35-PMTCONST)
    for site, sal in saliency:
        v, per = _units(site, _checked(site, sal), granularity)
        k = 0 if site.name in exclude else _per_module_k(site, budget, granularity)
        if k > 0:
            spread.add(v)
            ranked = ranked or (v.numel() > 0 and bool(v.max() > v.min()))
        idx = torch.sort(-v, stable=True).indices[:k]
        out[site.name] = _mask_from_units(site, idx, granularity)
        if site.name not in exclude:
            free.append(site)
            n_taken += out[site.name].n_protected
    if 0 < n_taken < sum(s.n_weights for s in free) and not ranked:  # equal within every module (H35-PMTCONST)
        if spread.constant():
            _refuse_uninformative("per_module_top", free, spread.lo)
        raise ValueError(
            f"per_module_top: the saliency is constant within each of the {len(free)} modules it protects in: "
            "nothing to rank a module's weights by (a module-level score given as a saliency?); use "
            "policy 'modules_by_score' for module scores, or a per-weight saliency"
        )
    if budget > 0 and free and n_taken == 0:
        _refuse_nothing(
            budget,
            sum(s.n_weights for s in free),
            f"{why}, the largest having {max(s.n_weights for s in free)} weights",
            min(_per_module_least(s, granularity) for s in free),
        )
    return out


def _split(sites: Sequence[Site], always: str | None, never: str | None) -> tuple[list[Site], list[Site], set[str]]:
    for name, pattern in (("always", always), ("never", never)):
        if pattern == "":  # an unset variable was taken as not given (H32-EMPTYFLAG)
            raise ValueError(f"{name} regex '' is empty (an unset environment variable?): give a pattern, or None")
    rx_a = re.compile(always) if always else None
    rx_n = re.compile(never) if never else None
    for what, rx in (("always", rx_a), ("never", rx_n)):
        if rx is not None and not any(rx.search(s.name) for s in sites):  # a typo would protect as if absent
            shown = ", ".join(s.name for s in list(sites)[:2])
            raise ValueError(
                f"{what} regex {rx.pattern!r} matches none of the {len(sites)} sites (site names look like {shown})"
            )
    banned = {s.name for s in sites if rx_n and rx_n.search(s.name)}
    forced = [s for s in sites if rx_a and rx_a.search(s.name) and s.name not in banned]
    free = [s for s in sites if s.name not in banned and s not in forced]
    return forced, free, banned


class BudgetExceededWarning(UserWarning):
    """The ``always`` sites alone protect more of the weights than the budget (they are protected
    whole and count against it, so the mask protects their share, not the budget)."""


def check_always_never(
    sites: Sequence[Site],
    budget: float,
    always: str | None = None,
    never: str | None = None,
    *,
    policy: str | None = None,
) -> str | None:
    """What the ``always`` / ``never`` regexes leave of a ``budget``, before any saliency is computed.

    ``ValueError`` when ``budget`` > 0 and ``never`` excludes every site (the mask would protect no
    weight: a budget above 0 that protects nothing is refused, module docs; a regex matching no site
    is refused by :func:`_split`). Returns a warning text when the ``always`` sites alone hold more
    weights than ``round(budget · N)`` (they are protected whole, so the mask protects their share,
    naming it), else ``None`` (always for ``policy="final_mlp"``, which takes no budget)."""
    budget = _check_budget(budget)
    sites = list(sites)
    forced, free, banned = _split(sites, always, never)
    n_total = sum(s.n_weights for s in sites)
    if budget > 0 and sites and not forced and not free:
        raise ValueError(
            f"never regex {never!r} matches all {len(sites)} sites: budget {budget:g} of {n_total} weights "
            "protects 0 weights; use budget=0 for no protection, or a never regex that leaves some sites"
        )
    n_forced = sum(s.n_weights for s in forced)
    if n_total and n_forced > round(budget * n_total) and policy != "final_mlp":
        return (
            f"always regex {always!r} protects {len(forced)} site(s) whole: {n_forced} of {n_total} weights "
            f"({100 * n_forced / n_total:.2f}%), above the budget {budget:g} ({100 * budget:.2f}%); the mask "
            f"protects at least {100 * n_forced / n_total:.2f}% of the weights"
        )
    return None


def modules_by_score(
    sites: Sequence[Site],
    scores: Any,
    budget: float = 0.02,
    *,
    always: str | None = None,
    never: str | None = None,
    behavior: str | None = None,
) -> dict[str, ProtectionMask]:
    """Whole modules in decreasing score while the protected total stays ≤ ``budget · N``.

    ``scores``: ``{site: score}`` or an Attribution (mean relative importance over
    behaviours, or of ``behavior``); scores that are all zero rank nothing and are refused
    (:func:`module_scores`). ``always`` sites are taken first (even over budget).
    """
    budget = _check_budget(budget)
    sc = module_scores(scores, behavior)  # all-zero scores rank nothing: refused
    refuse_unscored_sites(sc, sites, "modules_by_score")
    n_total = sum(s.n_weights for s in sites)
    forced, free, _ = _split(sites, always, never)
    values = {sc[s.name] for s in free}
    if len(values) == 1 and len(free) > 1:  # equal scores rank nothing: taken in module order (H34-CONSTSAL)
        raise ValueError(
            f"modules_by_score: every module score is {values.pop():g}: nothing to rank the modules by (the "
            "modules would be taken in module order); give scores that tell the modules apart"
        )
    chosen = list(forced)
    used = sum(s.n_weights for s in forced)
    pos = {s.name: i for i, s in enumerate(sites)}
    for s in sorted(free, key=lambda s: (-sc.get(s.name, 0.0), pos[s.name])):
        if used + s.n_weights <= budget * n_total:
            chosen.append(s)
            used += s.n_weights
    if budget > 0 and not chosen and free:
        smallest = min(s.n_weights for s in free)
        _refuse_nothing(
            budget,
            n_total,
            f"{budget * n_total:.0f} weights, fewer than the smallest module's {smallest}",
            smallest / n_total,
        )
    chosen.sort(key=lambda s: pos[s.name])
    return {s.name: ProtectionMask.full(s) for s in chosen}


def final_mlp(sites: Sequence[Site]) -> dict[str, ProtectionMask]:
    """The paper's protection: every MLP linear (gate/up/down) of the last decoder layer."""
    layers = [s.layer for s in sites if s.layer is not None]
    if not layers:
        raise ValueError("final_mlp: no site belongs to a decoder layer")
    last = max(layers)
    out = {s.name: ProtectionMask.full(s) for s in sites if s.layer == last and s.block == "mlp"}
    if not out:
        raise ValueError(f"final_mlp: layer {last} has no MLP linear among the given sites")
    return out


def apply_regexes(
    masks: Mapping[str, ProtectionMask], sites: Sequence[Site], *, always: str | None = None, never: str | None = None
) -> dict[str, ProtectionMask]:
    """Force whole sites in (``always``) or out (``never``; it wins) of existing ``masks``."""
    forced, _, banned = _split(sites, always, never)
    out = {k: v for k, v in masks.items() if k not in banned}
    for s in forced:
        out[s.name] = ProtectionMask.full(s)
    return out


POLICIES = ("global_top", "per_module_top", "modules_by_score", "final_mlp")


def _model_of(saliency: Any, scores: Any) -> dict | None:
    """``{"name", "weights_fingerprint"}`` of the model the masks are for: the saliency stream's
    model (:meth:`~lrm_interp.protect.saliency.SaliencyStream.model_record`), else the model an
    Attribution given as ``scores`` was computed on; ``None`` when neither says."""
    rec = saliency.model_record() if hasattr(saliency, "model_record") else None
    if rec is None and scores is not None:
        got = recorded_weights(scores)
        rec = None if got is None else {"name": got.get("name"), "weights_fingerprint": got["weights_fingerprint"]}
    return rec


def _other_sites(what: str, extra: Sequence[str], missing: Sequence[str]) -> ValueError:
    parts = [f"{len(extra)} site(s) not asked for (first: {extra[0]})"] if extra else []
    parts += [f"none for {len(missing)} of the sites asked for (first: {missing[0]})"] if missing else []
    return ValueError(
        f"build_masks: the saliency {what} {'; '.join(parts)}: it was built for other sites; build it with the "
        "same sites (build_saliency(..., sites)) or pass its sites to build_masks"
    )


def saliency_over(
    saliency: Iterable[tuple[Site, torch.Tensor]], sites: Sequence[Site]
) -> Iterable[tuple[Site, torch.Tensor]]:
    """``saliency`` when it scores exactly ``sites``, each once: a stream of other sites put the
    whole budget into them (its mlp sites only, 0 weights for an empty stream, masks over 28 sites
    for one asked for) and a site scored twice lost part of its share, silently (H32-SALSITES). A
    :class:`~lrm_interp.protect.saliency.SaliencyStream` is checked up front by its ``sites``; any
    other iterable as it is read (``ValueError`` at the first site not asked for or given twice, or
    at its end for the sites it never gave)."""
    want = [s.name for s in sites]
    given = {s.name: s for s in sites}
    known = getattr(saliency, "sites", None)
    if known is not None:
        names = [getattr(s, "name", s) for s in known]
        extra = [n for n in names if n not in set(want)] + repeated_site_names(names)
        missing = [n for n in want if n not in set(names)]
        if extra or missing:
            raise _other_sites("scores", extra, missing)
        for k in known:
            _same_shape(given, k)
        return saliency

    def read() -> Iterator[tuple[Site, torch.Tensor]]:
        seen: set[str] = set()
        for site, t in saliency:
            name = str(getattr(site, "name", site))
            if isinstance(site, str) and site in given:  # (name, tensor): a raw AttributeError (H34-SALNAME)
                site = given[site]
            elif not isinstance(site, (Site, str)):
                raise TypeError(
                    f"build_masks: the saliency must give (Site, tensor) pairs (a SaliencyStream, or [(site, tensor)] "
                    f"with sites of find_sites(model)), got a pair whose first item is {shown_value(site)}"
                )
            if name in seen:
                raise ValueError(f"build_masks: the saliency gives {name} twice: give each site once")
            if name not in want:
                raise _other_sites("gives", [name], [])
            _same_shape(given, site)
            seen.add(name)
            yield site, t
        missing = [n for n in want if n not in seen]
        if missing:
            raise _other_sites("gives", [], missing)

    return read()


def _same_shape(given: Mapping[str, Site], site: Any) -> None:
    """``ValueError`` when the saliency's ``site`` (a :class:`Site`) has another shape than the site of
    its name given to ``build_masks``: the masks and the budget were counted over the given site's
    weights, the scores over the saliency's (a site of doubled ``in_features`` protected 15892
    weights for a 2 % budget of 15729, H33-SITESHAPE)."""
    want = given.get(getattr(site, "name", site))
    if not isinstance(site, Site) or want is None:
        return
    a, b = (want.out_features, want.in_features, want.n_weights), (site.out_features, site.in_features, site.n_weights)
    if a != b:
        raise ValueError(
            f"build_masks: site {want.name} is [{a[0]}, {a[1]}] ({a[2]} weights) in sites but [{b[0]}, {b[1]}] "
            f"({b[2]} weights) in the saliency: give the sites of the model the saliency was computed on "
            "(find_sites(model))"
        )


@checked_arguments
def build_masks(
    sites: Sequence[Site],
    policy: str = "global_top",
    budget: float = 0.02,
    *,
    saliency: Iterable[tuple[Site, torch.Tensor]] | None = None,
    scores: Any = None,
    always: str | None = None,
    never: str | None = None,
    granularity: str = "elements",
    behavior: str | None = None,
    warn_budget: bool = True,
) -> MaskSet:
    """One entry point for every policy (see the module docs).

    ``global_top``/``per_module_top`` need ``saliency`` (a stream over ``sites``);
    ``modules_by_score`` needs ``scores``; ``final_mlp`` needs nothing. For ``global_top``
    the ``always`` modules count against the budget, so the total is exactly
    ``max(round(budget · N), n_always)``. A budget above 0 that protects nothing is refused
    (module docs). ``sites``: a non-empty list of Site (:func:`~lrm_interp.model.sites.find_sites`;
    a string or an empty list is refused); ``behavior``: only for ``modules_by_score`` (refused
    with another policy, which would ignore it).

    Returns a :class:`~lrm_interp.protect.masks.MaskSet` whose ``model`` is the weights record of
    the saliency's model, else of the model ``scores`` (an Attribution) was computed on: masks
    saved with :func:`~lrm_interp.protect.encoding.save_masks` keep it, and applying them to a
    model with other weights is refused.
    """
    sites = check_site_list(sites, "build_masks")  # 'mlp', [] failed deep inside (H15-MSS, H15-FSZ)
    budget = _check_budget(budget)
    if behavior is not None and policy != "modules_by_score":  # it was ignored without a word (H15-MBI)
        raise ValueError(
            f"build_masks: behavior={behavior!r} is read only by policy 'modules_by_score' (the behaviour of "
            f"an Attribution's scores); policy {policy!r} does not use it: leave it out, or build the saliency "
            "for that behaviour (build_saliency(..., behaviors=[...]))"
        )
    _units_of(granularity)  # 'bogus' was ignored by the module policies (H34-GRANIGN)
    if granularity != "elements" and policy in ("final_mlp", "modules_by_score"):
        raise ValueError(
            f"build_masks: granularity={granularity!r} is read only by the top-k policies (global_top, "
            f"per_module_top); policy {policy!r} protects whole modules: leave granularity out"
        )
    forced, _, banned = _split(sites, always, never)
    over = check_always_never(sites, budget, always, never, policy=policy)  # never: every site, refused
    if over is not None and warn_budget:  # warn_budget=False: the caller said it already (the CLI)
        import warnings

        warnings.warn(over, BudgetExceededWarning, stacklevel=user_stacklevel())
    if policy == "final_mlp":
        chosen = apply_regexes(final_mlp(sites), sites, always=always, never=never)
        if not chosen:  # `never` took every final MLP linear out: an empty mask with no word (H34-FMNEVER)
            raise ValueError(
                f"build_masks: never={never!r} excludes every site policy 'final_mlp' protects (the MLP linears of "
                "the last layer): the mask would protect nothing; narrow never, or use another policy"
            )
        return MaskSet(chosen, model=_model_of(saliency, scores))
    if policy == "modules_by_score":
        if scores is None:
            raise ValueError("policy 'modules_by_score' needs scores (a dict site -> score or an Attribution)")
        return MaskSet(
            modules_by_score(sites, scores, budget, always=always, never=never, behavior=behavior),
            model=_model_of(saliency, scores),
        )
    if policy not in ("global_top", "per_module_top"):
        raise ValueError(f"unknown policy {policy!r} (one of {POLICIES})")
    if saliency is None:
        raise ValueError(f"policy {policy!r} needs a saliency stream (lrm_interp.protect.saliency)")
    saliency = saliency_over(saliency, sites)
    skip = banned | {s.name for s in forced}
    if policy == "global_top":
        masks = global_top(
            saliency,
            budget,
            sites=sites,
            granularity=granularity,
            exclude=skip,
            reserved=sum(s.n_weights for s in forced),
        )
    else:
        masks = per_module_top(saliency, budget, granularity=granularity, exclude=skip)
    return MaskSet(
        apply_regexes(masks, sites, always=always, never=never),
        model=_model_of(saliency, scores),
        grid=getattr(saliency, "grid", None),  # the grid the saliency scored (build_saliency; H15-MGB)
    )
