"""python -m nydus_hybrid.devmapper: the devmapper snapshotter and its pool tools."""

import sys

from nydus_hybrid.devmapper.cli import main

sys.exit(main())
