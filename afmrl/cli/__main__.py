"""``python -m afmrl.cli`` = ``afmrl``."""

import sys

from afmrl.cli import main

sys.exit(main())
