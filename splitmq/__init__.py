"""splitmq: split DNN inference between devices, edge and cloud over MQTT."""

__version__ = "0.1.0"
