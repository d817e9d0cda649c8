"""``python -m flrec.cli``: the ``flrec`` command."""

import sys

from flrec.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
