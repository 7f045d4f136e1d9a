"""Native runtime modules: everything that touches a kernel or the Host Compute Service.

`runtime` never imports `cri_shim`; the daemon calls into it through `runtime.base`.
"""
