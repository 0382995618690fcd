"""`python -m client` is `wardgate` (the detached `connect` daemon runs this way)."""

import sys

from client.cli import main

sys.exit(main())
