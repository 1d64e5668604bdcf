"""``python -m tomoseg.cli``: the same as the ``tomoseg`` command."""

import sys

from tomoseg.cli import main

sys.exit(main())
