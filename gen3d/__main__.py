"""``python -m gen3d COMMAND``: the Gen3D command line (the same as the ``gen3d`` script)."""

import sys

from gen3d.backend.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
