"""splitmq.cloud: the cloud tier runs the shared worker as it is (``Worker(settings,
"cloud")``); what is its own is the results store both tiers may record in (``results``)."""
