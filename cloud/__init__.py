"""splitmq.cloud."""
