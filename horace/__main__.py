"""The ``horace`` command, and ``python -m horace``."""

import codecs
import json
import os
import sys


def _in_utf8_mode() -> None:
    """Names on disk are bytes, and the catalog's are UTF-8: decoded with another locale's
    encoding (ISO-8859-1, ASCII), the name of one file would be read as another's, and its
    content recorded under the wrong name. Python's UTF-8 mode decodes names as UTF-8
    whatever the locale: a process started without it (a service's ``LANG`` of another
    encoding, ``PYTHONUTF8=0``) starts itself again with it, before anything is done."""
    if codecs.lookup(sys.getfilesystemencoding()).name == "utf-8":
        return
    if sys.orig_argv[1:3] == ["-X", "utf8"]:  # (started again so already, and overruled)
        sys.stderr.write(
            f"horace: error: CONFIG: file names would be read as {sys.getfilesystemencoding()}, "
            "not UTF-8: run Horace without -X utf8=0\n"
        )
        sys.exit(6)
    os.environ["PYTHONUTF8"] = "1"  # (the sink process inherits it)
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])


def run() -> None:
    """Import the CLI and run it. Its imports take a tenth of a second or more: a Ctrl-C
    during them ends the command as one during the command does (one line, exit 130),
    not with a traceback of the import machinery."""
    if sys.version_info < (3, 11):  # noqa: UP036 (run from a source folder: pip refuses to install it)
        version = ".".join(map(str, sys.version_info[:3]))
        sys.stderr.write(
            f"horace: error: CONFIG: Horace needs Python 3.11 to 3.13; {sys.executable} is {version}\n"
        )
        sys.exit(6)
    _in_utf8_mode()
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
