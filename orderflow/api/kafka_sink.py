"""Producing to Kafka from request handlers: each request's records in one Kafka transaction.

``await sink.produce(topic, records)`` returns once the transaction holding every record of the request
is committed, with each record's partition and offset. Consumers reading ``read_committed`` (the
pipelines) then see all of the request's records or none of them. It fails with

- ``DeliveryFailed`` (the API answers 503): the transaction was not committed, either aborted or never
  got as far as the commit, so nothing of the batch is visible and nothing will ever be;
- ``CommitUnconfirmed`` (504): the commit was sent but its outcome did not come back in time, so the
  batch may or may not become visible. Only the commit itself can end this way: the sink sends it only
  after the broker has acknowledged every record, and anything that fails before that is aborted.

A transactional producer runs one transaction at a time, so the sink keeps a pool of ``producers`` of
them, each with its own ``transactional.id``, and runs transactions on a thread pool of the same size.
A handler awaits its transaction without holding one of the server's threads, so a slow or stalled
broker delays only the requests that produce, never the ones that don't. At most ``max_waiting``
requests wait; beyond that the answer is an immediate ``DeliveryFailed``. Every request's whole wait,
including its wait for a free producer, is bounded by ``timeout`` (plus ``COMMIT_TIMEOUT`` for the
commit).

Group commit: a transaction costs a few broker round trips whatever it holds, so requests share them.
Requests queue in arrival order; as soon as a producer is free it takes the oldest waiting request and
every request queued behind it, up to ``max_transaction_records`` records and ``max_transaction_bytes``
bytes, into one transaction. Nothing lingers: at low load a transaction holds the one request that
arrived, and requests that arrive while every producer is busy go together into the next one. This is
safe because the unit of visibility is still the transaction: every record of every request in it is
committed, or none is, so each request stays all-or-nothing, and its answer is that of the whole
transaction: all its requests get their own records' partitions and offsets once it is committed,
``DeliveryFailed`` when it is not, ``CommitUnconfirmed`` when the commit's outcome is unknown. A
transaction's deadline is that of its oldest request, the earliest of the group, so no request waits
past its own; a request whose deadline passes (or whose client leaves) while queued is never produced.
One bad request must not fail its neighbours: when the broker (or librdkafka) refuses a record for
something of its own (too large for the topic, a timestamp out of range, ...), a shared transaction is
aborted and each of its requests is retried alone, within its own deadline, so only the request the
refused record belongs to is answered 503 (a request alone is never retried: the 503 is its answer).

Recovery: a producer that meets a fatal error (fenced, its producer id unknown to a restarted broker,
...) or whose failed transaction could not be aborted is dropped; its slot builds a new one on the next
use, with the same ``transactional.id``, and ``init_transactions`` fences the old instance and aborts
whatever transaction it had left open. A transaction that fails before its commit on a producer built
earlier is retried once on a rebuilt one, for the requests whose time is left, before any of them is
answered 503: a producer left stale by a broker restart must not cost a client a 503 once the broker
answers again (nothing of the failed transaction is visible, so the retry writes each record once). While transactions fail, ``check`` (``/healthz``) builds a
producer itself, so it reports Kafka healthy again as soon as transactions work, with or without
traffic.

Keep-alives go without a transaction (``produce_record``): one record is all-or-nothing by itself, and a
transaction's own broker work (its coordinator's log writes and a commit marker in every partition it touched)
cost the broker ~4x the CPU of the records it held: ~870 against ~200 µs per record, 10 per transaction
(benchmarks/README.md, issue 26), which capped the API at the broker's ~1,000 transactions' worth of
keep-alives a second on two cores. One idempotent producer (no duplicates from its own retries, order kept per
partition) takes them, a thread serves its acknowledgements and wakes the event loop once per batch of them.
What it gives up: a record whose acknowledgement did not come in time may still have been written
(``CommitUnconfirmed``, 504), where a transaction would have been aborted (503). A keep-alive written twice
is harmless (it is a ping), so that is the right trade for it and not for orders or availability events.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import os
import queue
import socket
import threading
import time
import uuid
import warnings
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from orderflow.api.metrics import (
    KAFKA_PRODUCER_STARTS,
    KAFKA_TRANSACTION_REQUESTS,
    KAFKA_TRANSACTIONS,
    KAFKA_TRANSACTIONS_PRODUCING,
    KAFKA_UNTRANSACTED_RECORDS,
)

__all__ = ["CommitUnconfirmed", "Delivered", "DeliveryFailed", "KafkaSink"]

COMMIT_TIMEOUT = 5.0  # seconds the commit may take once every record is acknowledged
ABORT_TIMEOUT = 2.0   # seconds given to aborting a failed transaction before its producer is dropped
CLOSE_TIMEOUT = 2.0   # seconds a dropped producer's close may hold up its slot


def transaction_timeout_seconds(timeout: float) -> float:
    """The producers' ``transaction.timeout.ms``, in seconds, for a sink of ``timeout``: a transaction's records
    acknowledged within ``timeout``, its commit within COMMIT_TIMEOUT, and 5 s to spare. The coordinator aborts
    a transaction left open longer (an API process that died mid-transaction): read_committed readers of its
    partitions wait at most that long, plus the broker's check interval (docs/reliability.md)."""
    return timeout + COMMIT_TIMEOUT + 5
# Errors about a record itself, not about the broker or the transaction: the record is refused wherever it
# goes, so a shared transaction that meets one is retried request by request (see the module docstring).
_RECORD_FAULTS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG,
                            KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD, KafkaError.INVALID_TIMESTAMP})

_LOG = logging.getLogger(__name__)
# produce_record's outcomes, resolved once: one is counted per keep-alive.
_UNTRANSACTED = {outcome: KAFKA_UNTRANSACTED_RECORDS.labels(outcome=outcome)
                 for outcome in ("acknowledged", "refused", "unconfirmed")}
# close() tries to abort the open transaction of a producer we drop because it failed; that it cannot is
# expected, and the transaction is aborted by the producer that replaces it.
warnings.filterwarnings("ignore", message=r"Producer \w+ failed during close", category=RuntimeWarning)


class DeliveryFailed(RuntimeError):
    """The batch was not committed: nothing of it is, or will become, visible to read_committed readers."""


class CommitUnconfirmed(RuntimeError):
    """The commit was sent but not confirmed in time: the batch may or may not become visible."""


class RecordsRefused(DeliveryFailed):
    """Records were refused for something of their own (``_RECORD_FAULTS``), not aborted for the broker's sake."""


class Delivered(NamedTuple):
    topic: str
    partition: int
    offset: int


def _describe(exc: BaseException) -> str:
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def _error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


class _Request:
    """One request's records, waiting in the queue and then in a transaction; ``future`` gets its answer."""

    __slots__ = ("topic", "records", "deadline", "size", "future")

    def __init__(self, topic: str, records: list, deadline: float):
        self.topic = topic
        self.records = records
        self.deadline = deadline
        self.size = sum(len(record[0] or b"") + len(record[1]) for record in records)
        self.future: concurrent.futures.Future[list[Delivered]] = concurrent.futures.Future()


class _Slot:
    """One transactional producer, built on first use and rebuilt (same transactional.id) after a failure."""

    def __init__(self, config: dict, transactional_id: str):
        self.config = {**config, "transactional.id": transactional_id}
        self.producer: Producer | None = None
        # Whether the producer ran a transaction before the current one (else it was built for it): only such
        # a producer can be stale, and a transaction failed on it is retried on a rebuilt one.
        self.producer_used = False

    def ready(self, timeout: float) -> Producer:
        if self.producer is not None:
            self.producer_used = True
            return self.producer
        self.producer_used = False
        producer = Producer(self.config)
        try:
            producer.init_transactions(max(timeout, 0.001))
        except KafkaException as exc:
            # Closed now: left to the garbage collector, it would go on initialising in the background
            # and, once the broker answers, fence the producer that replaces it.
            _close(producer)
            raise DeliveryFailed(f"no transactional producer: {_describe(exc)}") from exc
        KAFKA_PRODUCER_STARTS.inc()
        self.producer = producer
        return producer

    def drop(self) -> None:
        """Closes the producer (the next use builds a new one)."""
        if self.producer is not None:
            _close(self.producer)
            self.producer = None


class KafkaSink:
    """A pool of transactional producers; ``produce`` writes one request's records in one transaction,
    which it may share with other requests (group commit, see the module docstring).

    Args:
        bootstrap_servers: the Kafka cluster.
        producers: transactional producers, i.e. transactions running at once, per process.
        max_waiting: requests waiting for a producer (or in a transaction) beyond which ``produce`` fails
            at once.
        timeout: seconds a request may wait for a producer and for the broker to acknowledge its records.
        producer_config: librdkafka settings added to (or overriding) the sink's.
        max_transaction_records: most records of the requests grouped into one transaction (a request
            larger than this goes alone).
        max_transaction_bytes: most bytes (keys and values) of the requests grouped into one transaction.
    """

    def __init__(self, bootstrap_servers: str, producers: int = 4, max_waiting: int = 256,
                 timeout: float = 15.0, producer_config: dict | None = None,
                 max_transaction_records: int = 10_000, max_transaction_bytes: int = 4 << 20):
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_transaction_records = max_transaction_records
        self.max_transaction_bytes = max_transaction_bytes
        common = {
            "bootstrap.servers": bootstrap_servers,
            # A broker that comes back is found within a second, not after librdkafka's 10 s backoff.
            "reconnect.backoff.max.ms": 1000,
            "socket.keepalive.enable": True,
            "log.connection.close": False,
        }
        config = {  # transactional.id (per slot) implies enable.idempotence and acks=all
            **common,
            "linger.ms": 2,
            # A record not acknowledged in time fails its transaction (which is then aborted).
            "message.timeout.ms": int(timeout * 1000),
            "transaction.timeout.ms": int(transaction_timeout_seconds(timeout) * 1000),
            **(producer_config or {}),
        }
        # Unique per process (two live producers sharing an id would fence each other); a slot keeps its
        # id across rebuilds, so a rebuilt producer fences the one it replaces.
        prefix = f"orderflow-api-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._slots: queue.LifoQueue[_Slot] = queue.LifoQueue()
        for n in range(producers):
            self._slots.put(_Slot(config, f"{prefix}-{n}"))
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=producers,
                                                               thread_name_prefix="kafka-transaction")
        # Requests not yet in a transaction, oldest (earliest deadline) first. A task on the executor waits for
        # a free producer and then takes whatever is queued. One such task waits at a time (``_pending``):
        # a request queued while one waits is taken by it, so it needs no task of its own (a task and its
        # Future per request cost a tenth of a keep-alive's time, issue 26). A task that takes the queue (or
        # gives up waiting) leaves a new one behind whenever requests are left, so the queue is never left with
        # requests and no task to take them.
        self._queue: collections.deque[_Request] = collections.deque()
        self._queue_lock = threading.Lock()
        self._pending = 0  # tasks submitted that have not taken the queue yet (under _queue_lock; 0 or 1)
        self._admin = AdminClient(common)
        self._waiting = 0  # touched on the event loop only
        self._failure: str | None = None  # why the last transaction failed, until one succeeds
        self._failure_lock = threading.Lock()
        # produce_record's idempotent producer, built on first use, and the thread serving its acknowledgements.
        self._record_config = {**common, "enable.idempotence": True, "linger.ms": 2,
                               "message.timeout.ms": int(timeout * 1000), **(producer_config or {})}
        self._record_producer: Producer | None = None
        self._record_thread: threading.Thread | None = None
        self._record_lock = threading.Lock()
        self._acknowledged: list[tuple] = []  # delivery reports of the current poll (acknowledgements thread)
        self._closing = threading.Event()

    # -- producing ------------------------------------------------------------------------------------------
    async def produce(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> list[Delivered]:
        """Writes ``(key, value)`` records in one transaction; raises DeliveryFailed or CommitUnconfirmed.
        A record given as ``(key, value, timestamp_ms)`` gets that Kafka timestamp (its event time; else the
        time of producing)."""
        if self._waiting >= self.max_waiting:
            raise DeliveryFailed(f"{self._waiting} requests are already waiting for Kafka")
        self._waiting += 1
        try:
            request = _Request(topic, records, time.monotonic() + self.timeout)
            with self._queue_lock:
                self._queue.append(request)
                if not self._pending:
                    self._submit_locked()
            result = asyncio.wrap_future(request.future)
            try:
                return await asyncio.wait_for(asyncio.shield(result), self.timeout)
            except asyncio.TimeoutError:
                if request.future.cancel():  # never taken into a transaction: nothing was produced
                    raise DeliveryFailed(f"no Kafka producer free within {self.timeout:.0f}s") from None
                return await result  # in a transaction: it ends by the request's deadline (and the commit's)
            except asyncio.CancelledError:
                request.future.cancel()  # the client left: a request not in a transaction yet never will be
                raise
        finally:
            self._waiting -= 1

    def _submit_locked(self) -> None:
        """A task for the oldest queued request, waiting at most until its deadline (under ``_queue_lock``)."""
        try:
            self._executor.submit(self._transact_next, self._queue[0].deadline)
        except RuntimeError:  # shut down: close() answers what is queued
            return
        self._pending += 1

    def _transact_next(self, deadline: float) -> None:
        """On the executor: the next transaction, of the requests queued when a producer is free."""
        try:
            slot = self._slots.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            self._take(expired_only=True)  # fails what waited past its deadline
            return
        try:
            group = self._take()
            if group:
                self._transact_group(slot, group)
        finally:
            self._slots.put(slot)

    def _take(self, expired_only: bool = False) -> list[_Request]:
        """Takes the oldest queued requests that fit in one transaction; those whose wait ended (client gone,
        deadline passed) are answered without being produced."""
        group: list[_Request] = []
        records = size = 0
        now = time.monotonic()
        with self._queue_lock:
            while self._queue:
                request = self._queue[0]
                if expired_only and request.deadline > now:
                    break
                if group and (records + len(request.records) > self.max_transaction_records
                              or size + request.size > self.max_transaction_bytes):
                    break
                self._queue.popleft()
                if not request.future.set_running_or_notify_cancel():
                    continue  # its wait ended (the client left, or its deadline): never produced
                if request.deadline <= now:
                    request.future.set_exception(
                        DeliveryFailed(f"no Kafka producer free within {self.timeout:.0f}s"))
                    continue
                group.append(request)
                records += len(request.records)
                size += request.size
            self._pending -= 1  # this task has taken the queue: what is left (or arrives next) needs a new one
            if self._queue:
                self._submit_locked()
        return group

    def _transact_group(self, slot: _Slot, group: list[_Request], rebuilt: bool = False) -> None:
        """Runs the group's transaction on the slot and answers each of its requests."""
        try:
            delivered = self._transact_on(slot, group)
        except (DeliveryFailed, CommitUnconfirmed) as exc:
            if type(exc) is DeliveryFailed and not rebuilt and slot.producer_used:
                # Aborted (or never begun) for the broker's or the producer's sake, on a producer built before:
                # it may be stale (fenced, its producer id or epoch unknown to a restarted broker), while the
                # broker answers again. Nothing of it is visible, so the requests whose time is left go once
                # more on a producer built now, before anyone is answered 503; a broker still down fails that
                # one too (init_transactions), within the same deadlines.
                slot.drop()
                left = [request for request in group if request.deadline > time.monotonic()]
                _LOG.info("a transaction failed (%s); retrying its %d requests on a rebuilt producer", exc, len(left))
                for request in group:
                    if request not in left:
                        request.future.set_exception(DeliveryFailed(*exc.args))
                if left:
                    self._transact_group(slot, left, rebuilt=True)
                return
            with self._failure_lock:
                self._failure = str(exc)
            if isinstance(exc, RecordsRefused) and len(group) > 1:
                # Aborted, nothing visible: each request again on its own, so that only the one whose record
                # is refused gets the 503.
                _LOG.info("a transaction of %d requests had records refused (%s); retrying them one by one",
                          len(group), exc)
                for request in group:
                    if request.deadline <= time.monotonic():
                        request.future.set_exception(DeliveryFailed(
                            f"not retried alone within {self.timeout:.0f}s after records refused: {exc}"))
                    else:
                        self._transact_group(slot, [request], rebuilt=True)
                return
            for request in group:  # one exception each: awaited in several handlers, tracebacks would mix
                answer = type(exc)(*exc.args)
                answer.__cause__ = exc.__cause__
                request.future.set_exception(answer)
            return
        except BaseException as exc:  # a bug: answer rather than leave the handlers waiting
            for request in group:
                if not request.future.done():
                    request.future.set_exception(exc)
            raise
        with self._failure_lock:
            self._failure = None
        for request, answer in zip(group, delivered, strict=True):
            request.future.set_result(answer)

    def _transact_on(self, slot: _Slot, group: list[_Request]) -> list[list[Delivered]]:
        deadline = min(request.deadline for request in group)  # the oldest request's: no one waits past its own
        producer = self._begin(slot, deadline)
        KAFKA_TRANSACTION_REQUESTS.observe(len(group))
        reports: list[list] = [[None] * len(request.records) for request in group]
        count = sum(len(request.records) for request in group)
        producing = KAFKA_TRANSACTIONS_PRODUCING.labels(requests="one" if len(group) == 1 else "several")
        try:
            producing.inc()
            try:
                for request, request_reports in zip(group, reports, strict=True):
                    for index, (key, value, *timestamp) in enumerate(request.records):
                        self._produce_one(producer, request.topic, key, value,
                                          functools.partial(_report, request_reports, index), deadline,
                                          timestamp[0] if timestamp else 0)
                left = producer.flush(max(deadline - time.monotonic(), 0))
            finally:  # acknowledged, or given up: no longer producing either way
                producing.dec()
            if left:
                raise DeliveryFailed(f"{left} of {count} records not acknowledged within {self.timeout:.0f}s")
            refused = [r for rs in reports for r in rs if isinstance(r, KafkaError)]
            if refused:
                fault = next((r for r in refused if r.code() in _RECORD_FAULTS), None)
                message = f"{len(refused)} of {count} records refused: {(fault or refused[0]).str()}"
                raise RecordsRefused(message) if fault is not None else DeliveryFailed(message)
            missing = sum(rs.count(None) for rs in reports)
            if missing:
                raise DeliveryFailed(f"{missing} of {count} records not acknowledged")
        except Exception as exc:  # noqa: BLE001 - whatever failed, nothing was committed: abort
            # A producer that turns fatal raises KafkaException from flush (or SystemError, when
            # confluent_kafka then calls a delivery callback with that exception still set).
            if not isinstance(exc, (DeliveryFailed, KafkaException)):
                _LOG.warning("Kafka transaction failed before its commit: %r", exc)
            self._abort(slot, producer)
            KAFKA_TRANSACTIONS.labels(outcome="aborted").inc()
            if isinstance(exc, DeliveryFailed):
                raise
            error = _error(exc) if isinstance(exc, KafkaException) else None
            if error is not None and error.code() in _RECORD_FAULTS and not error.fatal():
                raise RecordsRefused(_describe(exc)) from exc  # refused by librdkafka itself (produce)
            raise DeliveryFailed(_describe(exc)) from exc
        self._commit(slot, producer)
        KAFKA_TRANSACTIONS.labels(outcome="committed").inc()
        return [[Delivered(request.topic, partition, offset) for partition, offset in request_reports]
                for request, request_reports in zip(group, reports, strict=True)]

    def _begin(self, slot: _Slot, deadline: float) -> Producer:
        """The slot's producer in a new transaction; a producer left fatal (or unusable) is rebuilt once."""
        for attempt in (1, 2):
            producer = slot.ready(deadline - time.monotonic())
            try:
                producer.begin_transaction()
                return producer
            except KafkaException as exc:
                # Nothing was produced yet: a producer that went fatal while idle is simply replaced.
                slot.drop()
                if attempt == 2:
                    raise DeliveryFailed(f"could not begin a transaction: {_describe(exc)}") from exc
        raise AssertionError("unreachable")

    def _produce_one(self, producer: Producer, topic: str, key, value, on_delivery, deadline: float,
                     timestamp_ms: int = 0) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, timestamp=timestamp_ms, on_delivery=on_delivery)
                return
            except BufferError:
                # Local queue full: serve acknowledgements, then retry (within the request's time).
                if time.monotonic() > deadline:
                    raise DeliveryFailed("the producer's queue stayed full") from None
                producer.poll(0.05)

    def _abort(self, slot: _Slot, producer: Producer) -> None:
        if slot.producer is not producer:
            return  # already dropped
        try:
            producer.abort_transaction(ABORT_TIMEOUT)
        except Exception:  # noqa: BLE001 - KafkaException, or SystemError as above
            # Not aborted in time (broker down, producer fatal): the rebuilt producer's init_transactions
            # aborts it, or the coordinator does after transaction.timeout.ms. Never committed either way.
            slot.drop()

    def _commit(self, slot: _Slot, producer: Producer) -> None:
        commit_deadline = time.monotonic() + COMMIT_TIMEOUT
        while True:
            try:
                producer.commit_transaction(max(commit_deadline - time.monotonic(), 0.001))
                return
            except Exception as exc:  # noqa: BLE001 - KafkaException, or SystemError as above
                error = _error(exc) if isinstance(exc, KafkaException) else None
                if error is not None and error.txn_requires_abort() and not error.fatal():
                    # The coordinator refused the commit (abortable): it is aborted, nothing is visible.
                    self._abort(slot, producer)
                    KAFKA_TRANSACTIONS.labels(outcome="aborted").inc()
                    raise DeliveryFailed(f"commit refused: {_describe(exc)}") from exc
                if error is not None and error.retriable() and time.monotonic() < commit_deadline:
                    continue  # resumes the commit in progress
                # Timed out or fatal after EndTxn(commit) may have reached the coordinator: unknown.
                slot.drop()
                KAFKA_TRANSACTIONS.labels(outcome="unconfirmed").inc()
                raise CommitUnconfirmed(f"commit not confirmed within {COMMIT_TIMEOUT:.0f}s: {_describe(exc)}") from exc

    # -- health ---------------------------------------------------------------------------------------------
    def check(self, timeout: float = 3.0) -> None:
        """Raises unless a broker answers a metadata request and, after a failed transaction, a
        transactional producer can be (re)initialised."""
        deadline = time.monotonic() + timeout
        try:
            metadata = self._admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise DeliveryFailed(_describe(exc)) from exc
        if not metadata.brokers:
            raise DeliveryFailed("no broker in metadata")
        failure = self._failure
        if failure is None:
            return
        try:
            slot = self._slots.get_nowait()
        except queue.Empty:
            raise DeliveryFailed(f"transactions failing: {failure}") from None
        try:
            slot.drop()
            slot.ready(deadline - time.monotonic())
        except DeliveryFailed as exc:
            raise DeliveryFailed(f"transactions failing: {exc}") from exc
        finally:
            self._slots.put(slot)
        with self._failure_lock:
            if self._failure == failure:
                self._failure = None

    # -- one record, without a transaction -------------------------------------------------------------------
    async def produce_record(self, topic: str, record: tuple) -> Delivered:
        """Writes one ``(key, value[, timestamp_ms])`` record with the sink's idempotent producer, without a
        transaction (see the module docstring: for records whose repetition is harmless). Raises DeliveryFailed
        when it was not written (refused, or not sent) and CommitUnconfirmed when its acknowledgement did not
        come within ``timeout`` (it may have been written)."""
        if self._waiting >= self.max_waiting:
            raise DeliveryFailed(f"{self._waiting} requests are already waiting for Kafka")
        key, value, *timestamp = record
        future = asyncio.get_running_loop().create_future()
        producer = self._record_producer or self._start_record_producer()
        try:
            producer.produce(topic, value=value, key=key, timestamp=timestamp[0] if timestamp else 0,
                             on_delivery=functools.partial(self._record_acknowledged, future, topic))
        except BufferError:
            _UNTRANSACTED["refused"].inc()
            raise DeliveryFailed("the producer's queue is full") from None
        except KafkaException as exc:  # refused by librdkafka itself (too large, ...): never sent
            _UNTRANSACTED["refused"].inc()
            error = _error(exc)
            refused = error is not None and error.code() in _RECORD_FAULTS
            raise (RecordsRefused if refused else DeliveryFailed)(_describe(exc)) from exc
        self._waiting += 1
        try:
            return await future
        finally:
            self._waiting -= 1

    def _start_record_producer(self) -> Producer:
        with self._record_lock:
            if self._record_producer is None:
                producer = Producer(self._record_config)
                thread = threading.Thread(target=self._serve_acknowledgements, args=(producer,),
                                          name="kafka-acknowledgements", daemon=True)
                self._record_producer, self._record_thread = producer, thread
                thread.start()
            return self._record_producer

    def _record_acknowledged(self, future: asyncio.Future, topic: str, err: KafkaError | None, msg) -> None:
        """A delivery report (on the acknowledgements thread): kept for ``_answer_acknowledged``."""
        self._acknowledged.append((future, topic, err, msg.partition(), msg.offset()))

    def _serve_acknowledgements(self, producer: Producer) -> None:
        while not self._closing.is_set():
            producer.poll(0.5)
            self._answer_acknowledged()

    def _answer_acknowledged(self) -> None:
        """Turns the delivery reports gathered by the last poll into answers (counted) and hands them to their
        event loops, one wake-up per loop."""
        if not self._acknowledged:
            return
        reports, self._acknowledged = self._acknowledged, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        failed = None
        for future, topic, error, partition, offset in reports:
            if error is None:
                outcome, answer = "acknowledged", Delivered(topic, partition, offset)
            elif error.code() in _RECORD_FAULTS:
                outcome, answer = "refused", RecordsRefused(f"record refused: {error.str()}")
            elif error.code() == KafkaError._PURGE_QUEUE:
                outcome, answer = "refused", DeliveryFailed("the API is shutting down")
            else:
                outcome, answer = "unconfirmed", CommitUnconfirmed(
                    f"record not acknowledged within {self.timeout:.0f}s, it may have been written: {error.str()}")
            _UNTRANSACTED[outcome].inc()
            if error is not None:
                failed = error  # the last one: what /healthz reports
            by_loop.setdefault(future.get_loop(), []).append((future, answer))
        if failed is not None or self._failure is not None:
            with self._failure_lock:
                self._failure = None if failed is None else f"a record was not acknowledged: {failed.str()}"
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_records, answers)
            except RuntimeError:  # that loop is closed: no one waits for these answers any more
                pass

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._queue_lock:
            queued, self._queue = list(self._queue), collections.deque()
        for request in queued:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(DeliveryFailed("the API is shutting down"))
        self._admin = None
        while True:
            try:
                self._slots.get_nowait().drop()
            except queue.Empty:
                break
        self._closing.set()
        producer, thread = self._record_producer, self._record_thread
        if producer is not None and thread is not None:
            thread.join()
            producer.flush(CLOSE_TIMEOUT)  # what is in flight is answered, then what is left is purged
            _close(producer)
            self._answer_acknowledged()


def _close(producer: Producer) -> None:
    """Closes a producer that failed, waiting at most CLOSE_TIMEOUT (in-flight records are purged first,
    so close does not wait for the broker to acknowledge them)."""

    def close() -> None:
        try:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.close()
        except Exception:  # noqa: BLE001 - a fatal producer may raise on its way out; it is closed anyway
            pass

    closer = threading.Thread(target=close, name="kafka-producer-close", daemon=True)
    closer.start()
    closer.join(CLOSE_TIMEOUT)


def _settle_records(answers: list) -> None:
    """On the event loop: answers each ``produce_record`` still waiting (its client may have left)."""
    for future, answer in answers:
        if not future.done():
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)


def _report(reports: list, index: int, err, msg) -> None:
    reports[index] = err if err is not None else (msg.partition(), msg.offset())
