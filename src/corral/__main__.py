"""``python -m corral``: the command line (see :mod:`corral._cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
