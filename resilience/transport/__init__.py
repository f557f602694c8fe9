"""Transport adapters: the only code that touches grpc channels and servers."""
