"""``python -m pycontrast_det`` runs the ``pycontrast-zoo`` CLI."""
import sys

from .cli import main

sys.exit(main())
