"""The results store: every answer the workers gave, in SQLite or PostgreSQL.

``StoreUrl`` parses where it lives (the ``results`` setting), ``ResultsStore``
opens it (migrating it first) to write and query, and ``Recorder`` is what a
worker's ``on_result`` hook feeds. docs/results.md has the schema and the URLs.
"""

from splitmq.cloud.results.recorder import Recorder
from splitmq.cloud.results.store import ResultsStore
from splitmq.cloud.results.url import StoreUrl

__all__ = ["Recorder", "ResultsStore", "StoreUrl"]
