"""Inside the test-kernel VM: the singleton daemon on the real /dev/cachefiles, an EROFS mount
over fscache, every file read back; one line per step, exit 1 on a failure. Run it with
`bash scripts/vm/run.sh python3 scripts/vm/fscache_smoke.py`."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout

from nydus_hybrid.mounts import fscache
from tests.helpers.daemons import ApiClient, BuiltImage

work = Path("/mnt/w")
subprocess.run(["mount", "-t", "tmpfs", "none", "/mnt"], check=True)
img_file = Path("/mnt/ext4.img")
subprocess.run(["truncate", "-s", "256M", str(img_file)], check=True)
subprocess.run(["mkfs.ext4", "-q", str(img_file)], check=True)
work.mkdir()
subprocess.run(["mount", "-o", "loop", str(img_file), str(work)], check=True)
image = BuiltImage(work / "image", tag="vm")
(work / "cache").mkdir()
log = open(work / "daemon.log", "wb")
sock = str(work / "api.sock")
p = subprocess.Popen(
    [
        os.environ.get("DAEMON_PY", sys.executable),
        "-m",
        "nydus_hybrid.daemon",
        "singleton",
        "--fscache",
        str(work / "cache"),
        "--apisock",
        sock,
        "--log-level",
        "info",
    ],
    stdout=log,
    stderr=subprocess.STDOUT,
)
for _ in range(2400):
    if os.path.exists(sock):
        break
    time.sleep(0.05)
c = ApiClient(sock)
(work / "w1").mkdir()
entry = {
    "type": "bootstrap",
    "id": "f1",
    "domain_id": "f1",
    "config": {
        "id": "f1",
        "backend_type": "localfs",
        "backend_config": {"dir": str(image.blobs)},
        "cache_type": "fscache",
        "cache_config": {"work_dir": str(work / "w1")},
        "metadata_path": str(image.boot),
    },
}
print("PUT blobs:", c.put("/api/v2/blobs", entry, check=False).status, flush=True)
mnt = work / "mnt"
mnt.mkdir()
ok = True
try:
    fscache.mount_erofs_fscache(str(mnt), "f1")
    print("mount: ok", flush=True)
    for rel, data in image.files.items():
        got = (mnt / rel).read_bytes()
        same = got == data
        ok &= same
        print(f"read {rel}: {'ok' if same else 'WRONG'} ({len(got)} of {len(data)} bytes)", flush=True)
    fscache.umount_erofs_fscache(str(mnt))
except Exception as e:
    ok = False
    print("FAILED:", e, flush=True)
m = c.get("/api/v1/metrics/blobcache", check=False).body
print("metrics:", json.dumps(m)[:400], flush=True)
p.terminate()
p.wait(10)
print("daemon log tail:", (work / "daemon.log").read_text()[-1500:], flush=True)
print("RESULT:", "PASS" if ok else "FAIL", flush=True)
sys.exit(0 if ok else 1)
