"""splitmq.broker: start and stop mosquitto with the project's config; users, ACL, TLS."""

from splitmq.broker.launcher import Broker, find_mosquitto, free_port
from splitmq.broker.supervise import run_foreground

__all__ = ["Broker", "find_mosquitto", "free_port", "run_foreground"]
