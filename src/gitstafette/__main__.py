from __future__ import annotations

from gitstafette.cli import main

main()
