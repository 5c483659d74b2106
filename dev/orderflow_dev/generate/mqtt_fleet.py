"""Restaurants over MQTT, thousands per process: raw MQTT 3.1.1 on asyncio, one socket and one reader task each.

A client library would cost a thread (paho) or several tasks and buffers per connection; a restaurant needs
five packets: CONNECT (account = its id, last will ``offline`` retained on ``restaurants/{id}/status``),
PUBLISH ``online`` retained after CONNACK, PUBLISH keep-alives (QoS 1), and DISCONNECT, or nothing at all when
it "crashes" (``kill``: the socket is closed without DISCONNECT, as when a process is SIGKILLed, so the broker
publishes the will).

    fleet = RestaurantFleet([("127.0.0.1", 11883)], credentials)       # {restaurant_id: password}
    await fleet.connect_all(rate=1000)                                  # connections per second
    await fleet.ping(["rest-00001"])                                    # one keep-alive each, acknowledged
    fleet.kill(["rest-00001"]); await fleet.disconnect(["rest-00002"])

Restaurant ``i`` of the credentials (in order) goes to broker ``i % len(brokers)`` and, with
``source_addresses``, connects from address ``i % len(source_addresses)`` (127.0.0.x: each source address has
its own ~28,000 ephemeral ports per destination).
"""
from __future__ import annotations

import asyncio
import dataclasses
import heapq
import random
import struct
import time
from collections.abc import Iterable

from orderflow.model.mqtt import KEEPALIVE, OFFLINE, ONLINE, STATUS, topic

_CONNECT, _CONNACK, _PUBLISH, _PUBACK, _PINGREQ, _PINGRESP, _DISCONNECT = 1, 2, 3, 4, 12, 13, 14


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _length(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, keepalive: int) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, last will ``offline`` retained at QoS 1 on the status topic."""
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # username, password, will retain, will QoS 1, will, clean
    body = (_string(b"MQTT") + b"\x04" + bytes([flags]) + struct.pack("!H", keepalive) + _string(client_id.encode())
            + _string(topic(username, STATUS).encode()) + _string(OFFLINE) + _string(username.encode())
            + _string(password.encode()))
    return _packet(_CONNECT, 0, body)


def publish_packet(topic_name: str, payload: bytes, packet_id: int, retain: bool = False) -> bytes:
    """PUBLISH at QoS 1."""
    return _packet(_PUBLISH, 0x02 | (0x01 if retain else 0), _string(topic_name.encode())
                   + struct.pack("!H", packet_id) + payload)


class Refused(ConnectionError):
    """The broker refused the connection (CONNACK return code: 4 bad credentials, 5 not authorised)."""

    def __init__(self, code: int):
        super().__init__(f"CONNACK return code {code}")
        self.code = code


class RestaurantConnection:
    """One restaurant's MQTT connection."""

    def __init__(self, restaurant_id: str, password: str, keepalive: int = 60):
        self.restaurant_id = restaurant_id
        self.password = password
        self.keepalive = keepalive
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._task: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.last_sent = 0.0  # time.monotonic() of the last packet written: idle ones send PINGREQ

    def _send(self, packet: bytes) -> None:
        assert self._writer is not None
        self._writer.write(packet)
        self.last_sent = time.monotonic()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self.closed.is_set()

    async def connect(self, host: str, port: int, source_address: str | None = None, timeout: float = 30) -> None:
        """Connects (raises Refused or OSError) and publishes ``online``, retained, acknowledged."""
        self.closed = asyncio.Event()
        self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, local_addr=(source_address, 0) if source_address else None), timeout)
        self._send(connect_packet(self.restaurant_id, self.restaurant_id, self.password, self.keepalive))
        kind, body = await asyncio.wait_for(self._read_packet(), timeout)
        if kind != _CONNACK or len(body) < 2 or body[1] != 0:
            self._abort()
            raise Refused(body[1] if kind == _CONNACK and len(body) >= 2 else -1)
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        await self.publish(topic(self.restaurant_id, STATUS), ONLINE, retain=True, timeout=timeout)

    async def publish(self, topic_name: str, payload: bytes, retain: bool = False, timeout: float = 30) -> None:
        """PUBLISH at QoS 1 and wait for the broker's PUBACK (raises ConnectionError when the connection drops)."""
        if not self.connected:
            raise ConnectionError(f"{self.restaurant_id} is not connected")
        assert self._writer is not None
        self._next_id = self._next_id % 65535 + 1
        acked = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = acked
        self._send(publish_packet(topic_name, payload, self._next_id, retain))
        await asyncio.wait_for(acked, timeout)

    async def ping(self, payload: bytes = b"", timeout: float = 30) -> None:
        """A keep-alive (empty payload: sent now), acknowledged by the broker."""
        await self.publish(topic(self.restaurant_id, KEEPALIVE), payload, timeout=timeout)

    def ping_broker(self) -> None:
        """PINGREQ: what an MQTT client sends when it has sent nothing for a while, so the broker (which drops a
        client silent for 1.5 x its keep-alive) keeps it. The PINGRESP needs no answer."""
        if self.connected:
            self._send(_packet(_PINGREQ, 0, b""))

    def kill(self) -> None:
        """Closes the socket without DISCONNECT: the broker publishes the will."""
        self._abort()

    async def disconnect(self) -> None:
        """A clean DISCONNECT: the broker discards the will."""
        if self.connected:
            assert self._writer is not None
            self._send(_packet(_DISCONNECT, 0, b""))
            try:
                await self._writer.drain()
            except ConnectionError:
                pass
        self._abort()

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._closed()

    def _closed(self) -> None:
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"{self.restaurant_id}: connection closed"))
        self._pending.clear()

    async def _read_packet(self) -> tuple[int, bytes]:
        assert self._reader is not None
        header = await self._reader.readexactly(1)
        length, shift = 0, 0
        while True:
            digit = (await self._reader.readexactly(1))[0]
            length |= (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                break
        return header[0] >> 4, await self._reader.readexactly(length) if length else b""

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, body = await self._read_packet()
                if kind == _PUBACK:
                    future = self._pending.pop(struct.unpack("!H", body[:2])[0], None)
                    if future is not None and not future.done():
                        future.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._closed()


@dataclasses.dataclass
class FleetCounts:
    connected: int = 0
    refused: int = 0
    failed: int = 0
    pings: int = 0
    ping_failures: int = 0


class RestaurantFleet:
    """Many restaurants' connections in this process's event loop (see the module's docstring)."""

    def __init__(self, brokers: list[tuple[str, int]], credentials: dict[str, str], keepalive: int = 60,
                 source_addresses: list[str] | None = None):
        self.brokers = brokers
        self.keepalive = keepalive
        self.source_addresses = source_addresses or []
        self.connections = {rid: RestaurantConnection(rid, password, keepalive)
                            for rid, password in credentials.items()}
        self._index = {rid: i for i, rid in enumerate(self.connections)}
        self.counts = FleetCounts()
        self.retired: set[str] = set()  # killed for good: ping_forever leaves them alone
        self.refused: set[str] = set()  # the broker said no (bad credentials): never retried
        self._keeping_alive: asyncio.Task | None = None

    def broker_of(self, restaurant_id: str) -> tuple[str, int]:
        return self.brokers[self._index[restaurant_id] % len(self.brokers)]

    async def connect(self, restaurant_id: str) -> bool:
        i = self._index[restaurant_id]
        host, port = self.broker_of(restaurant_id)
        source = self.source_addresses[i % len(self.source_addresses)] if self.source_addresses else None
        try:
            await self.connections[restaurant_id].connect(host, port, source)
        except Refused:
            self.counts.refused += 1
            self.refused.add(restaurant_id)
            return False
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            self.counts.failed += 1
            return False
        self.counts.connected += 1
        if self._keeping_alive is None or self._keeping_alive.done():
            self._keeping_alive = asyncio.ensure_future(self._keep_alive_forever())
        return True

    async def _keep_alive_forever(self) -> None:
        """PINGREQ from every connection that sent nothing for half its keep-alive (a client library's job):
        while a large fleet ramps up, its first connections would otherwise sit silent past 1.5 x keep-alive and
        the broker would drop them. Ends with the event loop."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for connection in self.connections.values():
                if connection.connected and now - connection.last_sent >= connection.keepalive / 2:
                    connection.ping_broker()

    async def connect_all(self, ids: Iterable[str] | None = None, rate: float = 1000.0,
                          retry_for: float = 0.0) -> int:
        """Connects ``ids`` (default: every restaurant not connected) at up to ``rate`` per second; returns how
        many connected. With ``retry_for`` (s), a connection that failed (not one refused) is tried again, as a
        device does, one second after its round, until that much time has passed: a broker whose accept queue
        overflows under a ramp drops connections it would take a moment later."""
        wanted = [r for r in (self.connections if ids is None else ids) if not self.connections[r].connected]
        started = time.monotonic()
        connected = 0
        while True:
            round_started = time.monotonic()
            tasks = []
            for n, restaurant_id in enumerate(wanted):
                delay = round_started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self.connect(restaurant_id)))
            results = await asyncio.gather(*tasks)
            connected += sum(results)
            wanted = [r for r, ok in zip(wanted, results, strict=True) if not ok and r not in self.refused]
            if not wanted or time.monotonic() - started >= retry_for:
                return connected
            await asyncio.sleep(1.0)

    async def ping(self, ids: Iterable[str], payload: bytes = b"") -> int:
        """One keep-alive from each of ``ids`` (connected ones), each acknowledged; returns how many were."""

        async def one(restaurant_id: str) -> bool:
            try:
                await self.connections[restaurant_id].ping(payload)
            except (ConnectionError, asyncio.TimeoutError):
                self.counts.ping_failures += 1
                return False
            self.counts.pings += 1
            return True

        return sum(await asyncio.gather(*(one(r) for r in ids if self.connections[r].connected)))

    async def ping_forever(self, interval: float, seed: int = 7) -> None:
        """Every restaurant pings every ``interval`` s, each with its own phase; a dropped connection is
        reconnected at its next turn. Runs until cancelled."""
        rng = random.Random(seed)
        started = time.monotonic()
        due_at = sorted((rng.uniform(0, interval), r) for r in self.connections)  # a heap, being sorted
        while True:
            now = time.monotonic() - started
            due = []
            while due_at and due_at[0][0] <= now:
                at, restaurant_id = heapq.heappop(due_at)
                due.append(restaurant_id)
                heapq.heappush(due_at, (at + interval, restaurant_id))
            due = [r for r in due if r not in self.retired]
            lost = [r for r in due if not self.connections[r].connected]
            if lost:
                asyncio.ensure_future(self.connect_all(lost))
            if due:
                asyncio.ensure_future(self.ping(due))
            await asyncio.sleep(0.1)

    def kill(self, ids: Iterable[str]) -> int:
        """Drops the connections of ``ids`` abruptly (their wills fire); returns how many were connected."""
        killed = 0
        for restaurant_id in ids:
            connection = self.connections[restaurant_id]
            killed += connection.connected
            connection.kill()
        return killed

    def retire(self, ids: Iterable[str]) -> int:
        """Kills the connections of ``ids`` and never reconnects them (a crashed restaurant that stays down)."""
        ids = list(ids)
        self.retired.update(ids)
        return self.kill(ids)

    async def disconnect(self, ids: Iterable[str]) -> None:
        """Clean DISCONNECTs (no will)."""
        await asyncio.gather(*(self.connections[r].disconnect() for r in ids))

    def connected(self) -> int:
        return sum(c.connected for c in self.connections.values())


def read_credentials(path: str) -> dict[str, str]:
    """``{id: password}`` from lines ``id password`` (what ``python -m orderflow_dev.local mqtt-credentials`` prints)."""
    with open(path) as lines:
        return dict(line.split() for line in lines if line.strip())


async def _run(fleet: RestaurantFleet, interval: float, rate: float, seconds: float | None,
               kills_per_minute: float = 0.0, seed: int = 7) -> None:
    connected = await fleet.connect_all(rate=rate, retry_for=600.0)
    print(f"mqtt fleet: {connected} of {len(fleet.connections)} connected ({fleet.counts})", flush=True)
    pinging = asyncio.ensure_future(fleet.ping_forever(interval, seed))
    rng = random.Random(seed)
    started = last_report = time.monotonic()
    try:
        while seconds is None or time.monotonic() - started < seconds:
            # Now and then a restaurant's connection drops abruptly (its will fires); it reconnects at its next ping.
            await asyncio.sleep(60.0 / kills_per_minute if kills_per_minute else 1.0)
            if kills_per_minute:
                fleet.kill([rng.choice(list(fleet.connections))])
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                print(f"mqtt fleet: {fleet.connected()} connected, {fleet.counts}", flush=True)
    finally:
        pinging.cancel()
        await fleet.disconnect(list(fleet.connections))


def main(argv: list[str] | None = None) -> int:
    """``python -m orderflow_dev.generate mqtt --credentials FILE``: restaurants connected over MQTT, pinging."""
    import argparse
    import signal

    from orderflow.bridge.mqtt import broker_addresses
    from orderflow.config import load_settings

    parser = argparse.ArgumentParser(prog="python -m orderflow_dev.generate mqtt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--credentials", required=True,
                        help="file of 'id password' lines (python -m orderflow_dev.local mqtt-credentials ID...)")
    parser.add_argument("--interval", type=float, default=30.0, help="keep-alive period (s)")
    parser.add_argument("--keepalive", type=int, default=60, help="MQTT keep-alive of the connections (s)")
    parser.add_argument("--rate", type=float, default=1000.0, help="connections per second while connecting")
    parser.add_argument("--source-addresses", default="", help="comma-separated local addresses (127.0.0.x)")
    parser.add_argument("--kills-per-minute", type=float, default=0.0,
                        help="connections dropped abruptly per minute (each reconnects at its next ping)")
    parser.add_argument("--kill-on-sigusr1", type=int, default=0, metavar="N",
                        help="on SIGUSR1, kill the first N restaurants of the credentials file for good (a benchmark's "
                             "mass disconnect)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    args = parser.parse_args(argv)
    fleet = RestaurantFleet(broker_addresses(load_settings().mqtt_url), read_credentials(args.credentials),
                            keepalive=args.keepalive,
                            source_addresses=[a for a in args.source_addresses.split(",") if a])
    loop = asyncio.new_event_loop()
    task = loop.create_task(_run(fleet, args.interval, args.rate, args.seconds, args.kills_per_minute))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # a clean stop: DISCONNECTs, no wills
    if args.kill_on_sigusr1:
        loop.add_signal_handler(signal.SIGUSR1, lambda: print(
            f"mqtt fleet: killed {fleet.retire(list(fleet.connections)[:args.kill_on_sigusr1])}", flush=True))
    try:
        loop.run_until_complete(task)
    except (asyncio.CancelledError, KeyboardInterrupt):
        loop.run_until_complete(fleet.disconnect(list(fleet.connections)))
    return 0
