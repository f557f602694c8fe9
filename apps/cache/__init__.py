"""A small in-memory key/value cache served over gRPC."""
