import sys

from lrm_interp.cli.main import main

sys.exit(main())
