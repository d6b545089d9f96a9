"""``python -m userlm`` is the ``userlm`` command."""

import sys

from .cli.main import main

sys.exit(main())
