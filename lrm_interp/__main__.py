"""``python -m lrm_interp``: the ``lrm-interp`` command line (as ``python -m lrm_interp.cli``)."""

import sys

from lrm_interp.cli.main import main

sys.exit(main())
