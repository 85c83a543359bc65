"""Published events: decisions and alerts as CloudEvents on Redis Streams and NATS JetStream.

The outbox dispatcher (``riskguard.adapters.webhooks.dispatcher``) hands each batch of
messages to every configured :class:`EventPublisher`; see ``docs/webhooks.md``.
"""

from riskguard.adapters.streams.cloudevents import (
    STREAMS,
    CloudEvent,
    EventPublisher,
    event_json,
    stream_of,
    to_cloudevent,
)

__all__ = ["STREAMS", "CloudEvent", "EventPublisher", "event_json", "stream_of", "to_cloudevent"]
