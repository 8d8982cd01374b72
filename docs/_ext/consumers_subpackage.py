"""Griffe extension: document ``consumers/`` under its installed name ``aioconveyor.consumers``.

pyproject.toml maps the package ``aioconveyor.consumers`` to the top-level folder
``consumers/`` (``[tool.setuptools.package-dir]``); griffe finds packages by their folder,
so without this it cannot find ``aioconveyor.consumers`` at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[2]


class ConsumersSubpackage(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "aioconveyor" or "consumers" in pkg.members:
            return
        sub = griffe.GriffeLoader(
            extensions=griffe.load_extensions(), search_paths=[str(ROOT)],
            docstring_parser=loader.docstring_parser, docstring_options=loader.docstring_options,
        ).load("consumers")
        assert isinstance(sub, griffe.Module)
        pkg.set_member("consumers", sub)
