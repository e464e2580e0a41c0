"""Builds notebooks/quickstart.ipynb from the cells below (run: python notebooks/build_notebooks.py).

The notebook is executed in CI by tests/test_notebooks.py.
"""
from __future__ import annotations

from pathlib import Path

import nbformat as nbf

CELLS = [
    ("md", "# lrm_interp quickstart\n\nWhich modules of a small reasoning model matter for each reasoning "
           "behaviour, and what 3-bit quantization does to them. Everything runs offline on CPU in about a minute."),
    ("code", "%matplotlib inline\nimport os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\nimport torch\nimport lrm_interp\n"
             "from lrm_interp.toy import load_toy_model\nfrom lrm_interp.toy.tasks import generate_dataset\n"
             "torch.manual_seed(0)\nmodel, tok = load_toy_model()\nmodel"),
    ("md", "## Annotated reasoning traces\nThe task generators write traces with gold behaviour spans "
           "(the same format as the paper's annotated traces)."),
    ("code", "ds = generate_dataset(n_per_family=8, seed=4242)\nprint(ds)\nt = ds[0]\nprint(t.prompt + t.response)\n"
             "[(s.behavior, t.span_text(s)) for s in t.spans]"),
    ("md", "## Attribution\n`attribute()` computes a steering vector per behaviour and linear module "
           "(difference of means) and scores every module by attribution patching."),
    ("code", "res = lrm_interp.attribute(model, ds, tokenizer=tok, progress=False)\nres.top(5, 'backtracking')"),
    ("code", "df = res.to_dataframe()\ndf.sort_values('ri', ascending=False).head(10)"),
    ("code", "fig = res.heatmap()\nfig"),
    ("md", "## What 3-bit quantization (RTN, group 128) does to the importance map"),
    ("code", "import copy\nfrom lrm_interp.compress.quant import quantize_model_\nq = copy.deepcopy(model)\n"
             "quantize_model_(q, bits=3, group_size=128, method='rtn', progress=False)\n"
             "res_q = lrm_interp.attribute(q, ds, tokenizer=tok, progress=False)\n"
             "shift = lrm_interp.compare(res, res_q)\nshift.to_dataframe().sort_values('delta_ri').head(8)"),
    ("md", "The quantized copy really loses reasoning accuracy (greedy decoding on held-out problems):"),
    ("code", "from lrm_interp.toy.evaluate import evaluate\nfrom lrm_interp.toy.tasks import problems\n"
             "held = problems(10, seed=2)\n{'fp32': evaluate(model, tok, held), 'rtn3': evaluate(q, tok, held)}"),
    ("code", "shift.heatmap()"),
    ("md", "## Steering\nAdd α·û of the top backtracking module while generating."),
    ("code", "prompt = ds[0].prompt\nids = tok(prompt, return_tensors='pt')\n"
             "with res.steer(model, 'backtracking', alpha=4.0):\n"
             "    out = model.generate(**ids, max_new_tokens=60, do_sample=False)\n"
             "print(tok.decode(out[0][ids['input_ids'].shape[1]:]))"),
]


def build() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, src in CELLS:
        nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("quickstart.ipynb")
    nbf.write(build(), out)
    print(f"wrote {out}")
