"""``python -m analysis report RESULTS/NAME [--out DIR]``: the report without the CLI installed."""

import sys

from analysis.cli import main

sys.exit(main())
