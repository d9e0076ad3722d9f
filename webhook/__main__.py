"""`python -m webhook` behaves like the `cilium-startup-guard` console script."""

import sys

from webhook.cli import main

sys.exit(main())
