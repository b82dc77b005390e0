"""``python -m scorestream`` is the same as the ``scorestream`` command."""

import sys

from scorestream.cli import main

sys.exit(main())
