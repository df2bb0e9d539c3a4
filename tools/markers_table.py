"""Write the README's marker table from the table of markers (`runner/markers.py`), as cog
does: `python tools/markers_table.py` rewrites the section, `--check` only says whether it is
up to date (exit 1 when not). `tests/test_markers.py` fails while the two differ."""

from __future__ import annotations

import sys
from pathlib import Path

from runner.markers import in_readme

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    fresh = in_readme(text)
    if fresh == text:
        return 0
    if "--check" in argv:
        print(f"{README}: the marker table differs from runner/markers.py: run "
              "python tools/markers_table.py", file=sys.stderr)
        return 1
    README.write_text(fresh, encoding="utf-8")
    print(f"{README}: marker table rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
