"""A containerd client of our own (content, images, leases, snapshots and diff services,
and the CRI image service), enough for a lazy pull of a Nydus image (`pull.py`)."""
