"""``python -m scorestream`` is the same as the ``scorestream`` command."""

from scorestream.cli import entry

entry()
