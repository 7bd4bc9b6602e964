"""``python -m prunekit.cli``: the console script."""
import sys

from prunekit.cli import main

sys.exit(main())
