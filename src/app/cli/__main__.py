"""``python -m message_bus.app.cli``: the ``deltran-bus`` console script."""

import sys

from . import main

sys.exit(main())
