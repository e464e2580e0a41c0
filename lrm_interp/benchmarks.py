"""``lrm_interp.benchmarks``: the benchmark tasks and graders (:mod:`lrm_interp.data.benchmarks`).

::

    from lrm_interp import benchmarks
    items = benchmarks.load("aime", "aime_2024.jsonl")        # -> [BenchItem(.id, .prompt, .gold)]
    score = benchmarks.grade("aime", items[0], model_output)   # -> Grade
"""

from lrm_interp.data.benchmarks import *  # noqa: F401,F403
from lrm_interp.data.benchmarks import __all__  # noqa: F401
