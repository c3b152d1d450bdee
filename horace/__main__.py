"""The ``horace`` command, and ``python -m horace``."""

import json
import sys


def run() -> None:
    """Import the CLI and run it. Its imports take a tenth of a second or more: a Ctrl-C
    during them ends the command as one during the command does (one line, exit 130),
    not with a traceback of the import machinery."""
    try:
        from horace.cli import main
    except KeyboardInterrupt:
        said = {"code": "INTERRUPTED", "message": "interrupted", "exit_code": 130}
        if "--json" in sys.argv[1:]:
            sys.stderr.write(json.dumps({"error": said}) + "\n")
        else:
            sys.stderr.write("horace: error: INTERRUPTED: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
