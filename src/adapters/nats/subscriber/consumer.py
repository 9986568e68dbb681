"""Consumer management: find, create or repair the group's durable pull consumer."""

from __future__ import annotations

import dataclasses
import logging

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, ReplayPolicy

from message_bus.domain.catalog import MessageType
from message_bus.domain.dead_letter import replay_subject
from message_bus.domain.errors import BusConnectionError, MessageBusError
from message_bus.ports.config import SubscriberConfig

from ..client import NatsClient
from ..streams import StreamError

log = logging.getLogger("message_bus.nats.subscriber")


def _seconds(value: float | None) -> float:
    return round(float(value or 0.0), 6)


def _filters(config: ConsumerConfig) -> list[str]:
    """Every filter subject of ``config`` (one, or several), sorted."""
    one = [config.filter_subject] if config.filter_subject else []
    return sorted([*one, *(config.filter_subjects or [])])


class ConsumerBinding:
    """Finds or creates the group's durable pull consumer.

    ``ack_floor`` is the highest stream sequence below which the group acknowledged
    everything, as JetStream last reported it (at bind and on every :meth:`refresh`).
    A consumer that disappears under running subscriptions (deleted, or lost by the
    server) is re-created from just after that floor, never from the start of the
    stream: deliveries acknowledged since the last report may be handled again, none
    is skipped.
    """

    def __init__(
        self, client: NatsClient, stream: str, config: SubscriberConfig, message_type: MessageType
    ) -> None:
        self.client = client
        self.stream = stream
        self.name = config.consumer_name
        key = config.partition_key
        filter_subject = f"{message_type.subject_prefix}.{key.suffix if key else '>'}"
        self.config = ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=f"DelTran {message_type.value} consumer group {config.consumer_group}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.ack_wait,
            # Unlimited on the server: the subscriber counts deliveries itself and
            # dead-letters a delivery past max_deliver. A server-side limit would make
            # the NAK after a failed dead-letter store final, abandoning the message.
            max_deliver=-1,
            max_ack_pending=config.max_ack_pending,
            # The group's own replay subject: dead letters replayed to this group only.
            filter_subjects=[filter_subject, replay_subject(stream, self.name)],
            replay_policy=ReplayPolicy.INSTANT,
        )
        self.ack_floor = 0

    def _note(self, info: ConsumerInfo) -> None:
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else None
        if floor and floor > self.ack_floor:
            self.ack_floor = floor

    async def refresh(self, timeout: float) -> bool:
        """Updates ``ack_floor`` from JetStream; False if the consumer is gone.

        Errors other than "not found" are ignored (the next refresh tries again).
        """
        try:
            self._note(await self.client.jetstream.consumer_info(self.stream, self.name, timeout))
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, nats.js.errors.Error, MessageBusError, TimeoutError) as exc:
            log.debug("consumer %s: no ack floor (%s)", self.name, exc)
        return True

    def _drift(self, have: ConsumerConfig) -> list[str]:
        want = self.config
        lines = []
        for field in ("ack_wait", "max_deliver", "max_ack_pending", "filter_subjects"):
            found, wanted = getattr(have, field), getattr(want, field)
            if field == "ack_wait":
                found, wanted = _seconds(found), _seconds(wanted)
            elif field == "filter_subjects":
                found, wanted = _filters(have), _filters(want)
            if found != wanted:
                lines.append(f"{field}: {found} -> {wanted}")
        return lines

    async def ensure(self, timeout: float | None = None) -> None:
        """Binds to the consumer, creating it if absent or updating drifted settings.

        A consumer created anew delivers the whole stream, unless this object saw an
        ack floor: then it starts just after it (see the class doc).

        Args:
            timeout: Seconds per JetStream API call (default: the client's api_timeout).

        Raises:
            StreamError: The stream does not exist or JetStream refused the consumer.
            BusConnectionError: JetStream did not answer.
        """
        js = self.client.jetstream
        try:
            try:
                info = await js.consumer_info(self.stream, self.name, timeout=timeout)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == 10059:
                    raise StreamError(
                        self.stream, "does not exist; apply the stream catalog first"
                    ) from None
                config = self.config
                if self.ack_floor:
                    config = dataclasses.replace(
                        config,
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self.ack_floor + 1,
                    )
                    log.warning(
                        "consumer %s on %s was gone; re-created from stream sequence %d "
                        "(after its last known ack floor)",
                        self.name,
                        self.stream,
                        self.ack_floor + 1,
                    )
                await js.add_consumer(self.stream, config=config, timeout=timeout)
                log.info("consumer %s on %s created", self.name, self.stream)
                return
            self._note(info)
            drift = self._drift(info.config)
            if drift:
                log.warning(
                    "consumer %s on %s updated: %s", self.name, self.stream, "; ".join(drift)
                )
                have = info.config
                update = dataclasses.replace(
                    self.config,
                    deliver_policy=have.deliver_policy,
                    opt_start_seq=have.opt_start_seq,
                    opt_start_time=have.opt_start_time,
                )
                await js.add_consumer(self.stream, config=update, timeout=timeout)
        except nats.js.errors.ServiceUnavailableError as exc:
            raise BusConnectionError(f"JetStream is unavailable: {exc.description}") from exc
        except nats.js.errors.APIError as exc:
            raise StreamError(self.stream, f"consumer {self.name}: {exc.description}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusConnectionError(f"JetStream did not answer: {exc}") from exc


__all__ = ["ConsumerBinding"]
