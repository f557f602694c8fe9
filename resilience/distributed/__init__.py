"""State shared by every replica through Redis: circuit breakers and token buckets.

Opted into per middleware (``storage = "redis"``); the connection settings are the
``REDIS_*`` settings. See ``docs/replicas.md``.
"""
