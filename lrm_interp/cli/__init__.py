"""The ``lrm-interp`` command line (``lrm_interp.cli.main``); subcommands mirror the Python API."""

from lrm_interp.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
