import sys

from nydus_hybrid.daemon.main import main

sys.exit(main())
