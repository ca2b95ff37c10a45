"""`python -m walctl ...`, the same as the `walctl` command."""

import sys

from walctl.cli import main

sys.exit(main())
