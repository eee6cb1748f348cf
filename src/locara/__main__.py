"""``python -m locara`` runs the CLI."""

import sys

from locara.cli.main import main

sys.exit(main())
