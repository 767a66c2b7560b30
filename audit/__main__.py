"""``python -m audit``: the ``spine-audit`` command."""

from audit.cli import main

main()
