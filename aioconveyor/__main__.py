"""``python -m aioconveyor``: the demo, ``run CONFIG`` and ``check CONFIG`` (see ``cli.py``)."""

from __future__ import annotations

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
