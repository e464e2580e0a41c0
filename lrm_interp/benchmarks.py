"""``lrm_interp.benchmarks``: the benchmark tasks and graders (:mod:`lrm_interp.data.benchmarks`).

::

    from lrm_interp import benchmarks
    items = benchmarks.load("aime", "aime_2024.jsonl")        # -> [BenchItem(.id, .prompt, .gold)]
    score = benchmarks.grade("aime", items[0], model_output)   # -> Grade
    toy = benchmarks.load("math", per_family=30)              # generated; toy_n= is the deprecated name

"Benchmark" names four places (docs/architecture.md, "Names: one per concept"): the benchmark
*tasks* (:mod:`lrm_interp.data.benchmarks`: registry, readers, grading), this module (their public
import path, a re-export), *running and scoring* models on them
(:mod:`lrm_interp.evaluation.bench_run`, :mod:`~lrm_interp.evaluation.bench_suite`,
:mod:`~lrm_interp.evaluation.bench_score`: ``lrm-interp bench``), and the repository's own
speed / agreement scripts in ``benchmarks/`` (not installed).
"""

from lrm_interp.data.benchmarks import *  # noqa: F403 - re-exports the public names of data.benchmarks (its __all__)
from lrm_interp.data.benchmarks import __all__  # noqa: F401 - the same public names as data.benchmarks
