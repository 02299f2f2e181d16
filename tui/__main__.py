"""`python -m tui --url http://127.0.0.1:8080` runs the operator console (same as `sluice console`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
