"""Fakes of the Windows native APIs for tests on Linux (the real DLLs cannot run there)."""
