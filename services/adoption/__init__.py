"""AdoptionService: the value hierarchy (versions of strategies, initiatives, use cases and procedures) and product telemetry."""
