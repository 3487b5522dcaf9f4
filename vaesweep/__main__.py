"""``python -m vaesweep``: see vaesweep.cli.main."""

import sys

from vaesweep.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
