"""`python -m proxy ...`: the same command line as `serving-proxy` (`proxy.cli.main`)."""

import sys

from proxy.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
