"""splitmq.dashboard: the live web page for operators."""
