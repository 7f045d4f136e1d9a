"""One module per RPC group. Services raise `cri_shim.errors`; they never touch gRPC status codes."""
