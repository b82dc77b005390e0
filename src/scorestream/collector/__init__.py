"""The HTTP collector for website trackers (``scorestream collect``) and ``tracker.js``.

A browser cannot speak Kafka: the collector takes events over HTTP, validates each with
the worker's own event models, and produces the valid ones to the input topics. It
answers only once Kafka has acknowledged them.

Pure parts, testable without a server or a broker: :mod:`.keys` (sites, write keys,
origins, rate limits) and :mod:`.intake` (bodies and events). The edges:
:mod:`.producer` (the ``acks=all`` producer bridged to asyncio) and :mod:`.app` (the
aiohttp server and the command).
"""
