"""``--ready-file``: once a command listens, a small JSON file says where (its pid and the ports it bound),
for scripts, supervisors and tests to read instead of parsing the startup line of the log."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["ReadyFile"]


class ReadyFile:
    """The ready file at ``path`` (empty: none): :meth:`write` once listening, :meth:`remove` at shutdown.

    Written whole or not at all: into a temporary file of the same folder, then renamed over ``path``
    (a rename within one file system is atomic), so a reader that polls for it never sees half of it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._written = False

    def write(self, **fields: str | int) -> None:
        """Write ``{"pid": …, **fields}``. :raises OSError: the folder is missing or not writable."""
        if not self.path:
            return
        target = Path(self.path)
        content = json.dumps({"pid": os.getpid(), **fields}) + "\n"
        try:
            descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:  # its message would name the temporary file, not the one asked for
            raise OSError(exc.errno, f"cannot write the ready file {self.path}: {exc.strerror}") from exc
        try:
            # mkstemp's 0600 would hide it from a supervisor running as another user; it holds no secret.
            os.fchmod(descriptor, 0o644)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(content)
            # No fsync: the file says the process is listening now, which no reboot preserves anyway.
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._written = True

    def remove(self) -> None:
        """Remove the file this process wrote (another's, left at the same path, stays)."""
        if self._written:
            self._written = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __repr__(self) -> str:
        return f"ReadyFile({self.path!r}, written={self._written})"
