"""splitmq dashboard: a live web page of the running system and of the model pool.

``server`` serves the page and its API; ``feed`` reads telemetry, plans, results
and errors from MQTT into ``state``; ``models`` and ``tryout`` are the Models view
(the pool, uploads, an image run through a split). Nothing here publishes to MQTT.
"""
