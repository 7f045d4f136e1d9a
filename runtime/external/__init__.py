"""Backends that drive an installed OCI runtime binary (runc) with cri-shim's own bundles."""
