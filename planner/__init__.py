"""splitmq.planner."""
