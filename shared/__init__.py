"""Pieces every tier shares: graph cuts, partitions, pool, codecs, wire format, MQTT."""
