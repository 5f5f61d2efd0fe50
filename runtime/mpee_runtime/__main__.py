"""`python -m mpee_runtime BUNDLE TEXT`: the same as mpee-run."""

import sys

from .cli.run import main

sys.exit(main())
