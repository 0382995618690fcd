"""`python -m cluster` runs `wardgate-cluster`."""

import sys

from cluster.main import main

sys.exit(main())
