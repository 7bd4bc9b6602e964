import sys

from prunekit.reporting.render import main

sys.exit(main())
