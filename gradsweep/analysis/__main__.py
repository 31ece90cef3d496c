"""``python -m gradsweep.analysis report RESULTS/NAME [--out DIR]``: the report without the CLI installed."""

import sys

from gradsweep.analysis.cli import main

sys.exit(main())
