"""Image conversion to Nydus, as nydusify and nydus-snapshotter's converter shape it (issue
15): `oci` holds the OCI media types, annotations and descriptors; `manifest` assembles a
Nydus image from converted layers (the bootstrap layer, the config, the manifest and the
index entry). The per-layer work is `builder.build(..., inline_bootstrap=True)` and
`builder.merge`."""
