"""Loaded by the backend under test (PYTHONPATH): records every socket connect and name lookup the
process (and its forked workers) makes, through Python's audit hooks, to $PRELABEL_AUDIT_FILE."""

import os
import sys

_path = os.environ.get("PRELABEL_AUDIT_FILE")

if _path:

    def _hook(event: str, args: tuple) -> None:
        if event == "socket.connect":
            address = args[1]
        elif event == "socket.getaddrinfo":
            address = (args[0], args[1])
        else:
            return
        with open(_path, "a") as fh:
            fh.write(f"{event} {address!r}\n")

    sys.addaudithook(_hook)
