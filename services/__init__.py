"""cvh gRPC services: registry, scoring and hierarchy, and what they share (``services.common``)."""
