"""End-to-end tests: images built, mounted (FUSE, the fusepy shim, kernel EROFS) and read."""
