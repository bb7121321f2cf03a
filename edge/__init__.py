"""splitmq.edge."""
