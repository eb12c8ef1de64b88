"""The hierarchy service: real-time priority for the front line, answered from an in-memory snapshot."""
