"""``lrm_interp.benchmarks``: the benchmark tasks and graders (:mod:`lrm_interp.data.benchmarks`).

::

    from lrm_interp import benchmarks
    items = benchmarks.load("aime", "aime_2024.jsonl")        # -> [BenchItem(.id, .prompt, .gold)]
    score = benchmarks.grade("aime", items[0], model_output)   # -> Grade
"""

from lrm_interp.data.benchmarks import *  # noqa: F403 - re-exports the public names of data.benchmarks (its __all__)
from lrm_interp.data.benchmarks import __all__  # noqa: F401 - the same public names as data.benchmarks
