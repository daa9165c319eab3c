"""``python -m bayesclust``: the command line (see :mod:`bayesclust.cli`)."""

from .cli import run

run()
