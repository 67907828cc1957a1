"""Ray Serve deployments, one module per gRPC service (thin: proto <-> library calls)."""
