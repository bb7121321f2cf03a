"""splitmq.device."""
