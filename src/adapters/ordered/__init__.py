"""Ordered partitions: a consumer group whose members own partitions and handle each in order.

Shared by the NATS and in-memory adapters: they provide the group store, the stream
source and the dead-letter sink (:mod:`.store`, :mod:`.source`); the ordered consumer
does the rest. The design is in ``docs/ordering.md``.
"""
