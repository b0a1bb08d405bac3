"""The test suite: unit/, compat/ (Nydus and nydus-snapshotter compatibility), e2e/
(mounts end to end), storage/ (real storage servers); shared helpers in helpers/."""
