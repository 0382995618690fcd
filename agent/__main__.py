"""`python -m agent` is `wardgate-agent`."""

import sys

from agent.main import main

sys.exit(main())
