"""``python -m u2net.cli``: the ``u2net`` command."""

import sys

from . import main

sys.exit(main())
