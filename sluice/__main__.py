"""`python -m sluice ARGS` is `sluice ARGS`."""
import sys

from sluice.cli import main

sys.exit(main())
