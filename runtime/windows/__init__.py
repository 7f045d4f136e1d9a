"""The Windows backend on the Host Compute Service (HCS), HCN and Windows layers.

Every module imports on Linux and nothing loads a DLL at import time: only
`platform.windows_platform()` opens computecore.dll and friends, and only when
`sys.platform == "win32"`. Everything else receives its native APIs injected,
which is how tests/windows drives the backend with fakes on Linux.
"""
