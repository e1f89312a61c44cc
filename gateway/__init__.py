"""Edge gateway application: local broker, ingest, rules, batching, durable buffer, wiring."""
