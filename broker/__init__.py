"""splitmq.broker: start and stop mosquitto with the project's config."""

from splitmq.broker.launcher import Broker, find_mosquitto, free_port, run_foreground

__all__ = ["Broker", "find_mosquitto", "free_port", "run_foreground"]
