"""splitmq.edge: the edge tier, the shared worker plus plain cameras' frames (``frames``)."""
