"""`python -m wardgate.cluster` runs `wardgate-cluster`."""

import sys

from wardgate.cluster.main import main

sys.exit(main())
