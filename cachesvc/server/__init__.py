"""gRPC transport only: converts between the wire and core, maps errors, serves health and reflection."""
