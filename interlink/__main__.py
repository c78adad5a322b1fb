"""`python -m interlink` is `kod-interlink`."""

import sys

from interlink.main import main

sys.exit(main())
