"""The MQTT load generator behaves as restaurants' devices do, against the session's Mosquitto: an idle connection
stays up (PINGREQ), a failed connection is tried again, a refused one is not."""
from __future__ import annotations

import asyncio
import uuid

import port_for

from orderflow_dev.generate.mqtt_fleet import RestaurantFleet

SUFFIX = uuid.uuid4().hex[:6]


def test_an_idle_connection_outlives_the_brokers_keepalive_timeout(stack):
    restaurant = f"idle-{SUFFIX}"
    # The broker drops a client silent for 1.5 x its keep-alive (3 s here); the fleet sends PINGREQ after 1 s.
    fleet = RestaurantFleet([("127.0.0.1", stack.ports.mosquitto)], stack.issue_mqtt_credentials([restaurant]),
                            keepalive=2)

    async def idle():
        assert await fleet.connect_all() == 1
        await asyncio.sleep(7)  # more than twice the broker's timeout, sending nothing of its own
        still_up = fleet.connections[restaurant].connected
        assert await fleet.ping([restaurant]) == 1  # the broker still acknowledges on that connection
        await fleet.disconnect([restaurant])
        return still_up

    assert asyncio.run(idle())


def test_a_failed_connection_is_retried_and_a_refused_one_is_not(stack):
    closed_port = port_for.select_random()  # nothing listens: every attempt fails at once
    restaurant = f"retry-{SUFFIX}"
    failing = RestaurantFleet([("127.0.0.1", closed_port)], {restaurant: "x"})
    assert asyncio.run(failing.connect_all(retry_for=2.5)) == 0
    assert failing.counts.failed >= 3, failing.counts  # the first round, then one a second

    refused = RestaurantFleet([("127.0.0.1", stack.ports.mosquitto)], {f"nobody-{SUFFIX}": "wrong"})
    assert asyncio.run(refused.connect_all(retry_for=30)) == 0
    assert (refused.counts.refused, refused.counts.failed) == (1, 0)
