"""`python -m sidecars.docker`: the same as the `kod-docker-sidecar` command."""

import sys

from sidecars.docker.main import main

sys.exit(main())
