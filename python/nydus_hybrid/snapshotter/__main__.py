import sys

from nydus_hybrid.snapshotter.server import main

sys.exit(main())
