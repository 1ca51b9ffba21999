"""``python -m afmrl`` = ``afmrl`` (and what ``torchrun -m afmrl ...`` / ``accelerate launch -m
afmrl ...`` run in each process)."""

import sys

from afmrl.cli import main

sys.exit(main())
