import sys

from nydus_hybrid.daemon import early

# Mount first when the command line allows it (`daemon.early`): everything imported after
# this line delays the first read of a container whose daemon is starting.
_early = early.start(sys.argv[1:])

from nydus_hybrid.daemon.main import main  # noqa: E402

sys.exit(main(early=_early))
