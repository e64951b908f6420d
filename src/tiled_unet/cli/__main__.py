"""``python -m tiled_unet.cli``: the same as the ``tiled-unet`` command."""

import sys

from . import main

sys.exit(main())
