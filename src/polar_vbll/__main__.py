"""``python -m polar_vbll``: the command line, as launchers start it (``accelerate launch -m polar_vbll fit ...``,
``torchrun -m polar_vbll fit ...``)."""

import sys

from .cli import main

sys.exit(main())
