"""``python -m lightning_classim``: the ``classim`` command line (:mod:`lightning_classim.cli`)."""

import sys

from lightning_classim.cli import main

if __name__ == "__main__":
    sys.exit(main())
