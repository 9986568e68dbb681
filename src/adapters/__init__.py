"""The adapters: NATS JetStream, the in-memory broker, and telemetry decorators around any port."""
