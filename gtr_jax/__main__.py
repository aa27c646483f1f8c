"""`python -m gtr_jax` runs the `gtr-jax` command line."""

import sys

from gtr_jax.cli.main import main

sys.exit(main())
