"""Security: secrets and the files that hold them, and TLS.

``secret.py`` holds :class:`~gitstafette.security.secret.Secret`, the value that never shows itself (a
leaf: config imports it); ``secret_files.py`` reads webhook secrets, client tokens and the admin token
from their files; ``tls.py`` turns the TLS settings into the server's renewable certificate and the
client's channel credentials; ``certs.py`` makes the development certificates of ``gitstafette certs``.
Who may do what with a token (the grants) is the server's: ``server/auth.py``.
"""

from __future__ import annotations

__all__: list[str] = []
