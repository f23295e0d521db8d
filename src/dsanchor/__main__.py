"""``python -m dsanchor`` (and ``torchrun -m dsanchor ...``): the command-line interface."""

import sys

from dsanchor.cli import main

sys.exit(main())
