"""`python -m wardgate.agent` is `wardgate-agent`."""

import sys

from wardgate.agent.main import main

sys.exit(main())
