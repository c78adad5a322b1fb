import sys

from sidecars.slurm.main import main

sys.exit(main())
