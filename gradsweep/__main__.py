"""``python -m gradsweep``: the same as the ``gradsweep`` command."""

import sys

from gradsweep.cli import main

sys.exit(main())
