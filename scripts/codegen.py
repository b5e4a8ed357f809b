"""Generate the Python gRPC code in ``src/gitstafette/_proto`` from ``proto/``.

Run ``python scripts/codegen.py`` after changing a ``.proto`` file and commit the result;
``tests/test_codegen.py`` fails when the committed code and the ``.proto`` files disagree.
protoc writes absolute imports that follow the proto package (``from gitstafette.v1 import …``);
they are rewritten to relative imports so the generated modules live inside our package.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT = ROOT / "src" / "gitstafette" / "_proto"
PROTOS = ("gitstafette/v1/gitstafette.proto", "info/gitstafette_info.proto")

_ABSOLUTE_IMPORT = re.compile(r"^from (?:gitstafette\.v1|info) import (\w+_pb2)", re.MULTILINE)


def generate(output: Path) -> list[Path]:
    """Write the generated modules for every file of ``PROTOS`` into ``output`` (flat)."""
    from grpc_tools import protoc

    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        for source in sorted(Path(scratch).rglob("*.py*")):
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1", source.read_text())
            target = output / source.name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(OUTPUT):
        print(path.relative_to(ROOT))
    sys.exit(0)
