"""Tests that run inside a VM on a test kernel (tests/helpers/vm.py). On the host only the
launcher (test_real_kernel.py) is collected; tests/vm/guest/ is what it runs in the guest,
where NYDUS_IN_VM is set."""

import os

collect_ignore = [] if os.environ.get("NYDUS_IN_VM") else ["guest"]
