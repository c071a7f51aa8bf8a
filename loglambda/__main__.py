"""``python -m loglambda`` is the ``loglambda`` command."""

from loglambda.core.cli import main

main()
