"""``python -m bench._worker MODULE FUNC JSON_KWARGS``: one measurement in a fresh process.

Prints the function's result as JSON on the last line of stdout.
"""

from __future__ import annotations

import importlib
import json
import sys


def main() -> None:
    module, func, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    result = getattr(importlib.import_module(module), func)(**kwargs)
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
