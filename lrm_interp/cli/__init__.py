"""The ``lrm-interp`` command line: :func:`lrm_interp.cli.main.main`; subcommands mirror the Python API
(``main.py``: quickstart, attribute, parse, compare; ``protect.py``: protect, quantize; ``toy.py``: toy)."""
