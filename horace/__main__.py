"""``python -m horace``: the same as the ``horace`` command."""

from horace.cli import main

main()
