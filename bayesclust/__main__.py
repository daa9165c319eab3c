"""``python -m bayesclust``: the command line (see :mod:`bayesclust.cli`)."""

import sys

from .cli import main

sys.exit(main())
