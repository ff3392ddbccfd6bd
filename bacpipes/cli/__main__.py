"""`python -m bacpipes.cli`: the same as the `bacpipes` command."""

import sys

from bacpipes.cli import main

sys.exit(main())
