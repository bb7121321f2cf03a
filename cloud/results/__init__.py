"""The results store: every answer the workers gave, in SQLite or PostgreSQL.

``StoreUrl`` parses where it lives (the ``results`` setting), ``ResultsStore``
opens it (migrating it first) to write and query, ``Recorder`` queues rows for it
(a worker's ``on_result`` hook feeds one), and ``ResultsListener`` records every
tier's answers from ``result/+``. docs/results.md has the schema and the URLs.
"""

from splitmq.cloud.results.listener import ResultsListener
from splitmq.cloud.results.recorder import Recorder
from splitmq.cloud.results.store import ResultsStore
from splitmq.cloud.results.url import StoreUrl

__all__ = ["Recorder", "ResultsListener", "ResultsStore", "StoreUrl"]
