"""`python -m servesim ...` runs the command line, as the `servesim` script does."""

import sys

from servesim.cli.main import main

sys.exit(main())
