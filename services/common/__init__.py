"""Code shared by at least two services: settings, logging, the Redis store, gRPC plumbing."""
