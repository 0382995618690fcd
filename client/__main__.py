"""`python -m wardgate.client` is `wardgate` (the detached `connect` daemon runs this way)."""

import sys

from wardgate.client.cli import main

sys.exit(main())
