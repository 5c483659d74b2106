import dataclasses
import os
import subprocess

import port_for
import pytest
from botocore.exceptions import ClientError

from orderflow.bootstrap import dynamodb_table_names
from orderflow.clients import aws_client
from orderflow_dev.local import LocalStack, ServiceFailed, StackPorts
from orderflow_dev.local.roundtrip import run_roundtrips


def test_roundtrip_through_every_service(module_settings):
    rows = run_roundtrips(module_settings)
    assert [r.service for r in rows] == ["kafka", "postgres", "redis", "memcached", "dynamodb", "sns"]
    failed = [(r.service, r.detail) for r in rows if not r.ok]
    assert failed == []


def test_dynamodb_is_served_apart_from_sns_with_dynamodb_s_own_validation(module_settings):
    """dynalite answers DynamoDB (moto only SNS), and refuses what DynamoDB refuses where moto did not: the
    sinks' 25-per-request BatchWriteItem limit and 38-digit numbers; oversized keys too."""
    assert module_settings.dynamodb_endpoint_url != module_settings.sns_endpoint_url
    client = aws_client(module_settings, "dynamodb")
    table = module_settings.client_volume_table
    assert table in dynamodb_table_names(client)

    def refused(**request) -> str:
        with pytest.raises(ClientError) as refusal:
            client.batch_write_item(**request)
        assert refusal.value.response["Error"]["Code"] == "ValidationException"
        return refusal.value.response["Error"]["Message"]

    def put(token: str, total: str = "1") -> dict:
        return {"PutRequest": {"Item": {"client_token": {"S": token}, "day": {"S": "2026-01-02"},
                                        "total": {"N": total}}}}

    refused(RequestItems={table: [put(f"v-{i}") for i in range(26)]})
    assert "2048" in refused(RequestItems={table: [put("k" * 2049)]})
    assert "38 significant digits" in refused(RequestItems={table: [put("v-digits", "1" * 39)]})
    assert client.batch_write_item(RequestItems={table: [put("v-ok", "5.000010")]})["UnprocessedItems"] == {}
    item = client.get_item(TableName=table, Key={"client_token": {"S": "v-ok"}, "day": {"S": "2026-01-02"}},
                           ConsistentRead=True)["Item"]
    assert item["total"]["N"] == "5.00001"  # numbers come back normalised, as from DynamoDB
    # The SNS endpoint (moto) has no such table: the two services do not share state.
    with pytest.raises(ClientError):
        aws_client(dataclasses.replace(module_settings, dynamodb_endpoint_url=module_settings.sns_endpoint_url),
                   "dynamodb").describe_table(TableName=table)


@pytest.mark.needs_stack  # Node.js on PATH (dynalite's runtime)
def test_dynamodb_survives_a_client_that_disconnects_in_the_middle_of_a_request(module_settings):
    # dynalite rethrew the request's "aborted" error and died: a pipeline killed mid-write took the local
    # DynamoDB down with it (dev/orderflow_dev/local/node/dynalite-server.js).
    import socket
    import struct
    import time
    from urllib.parse import urlsplit

    endpoint = urlsplit(module_settings.dynamodb_endpoint_url)
    for _ in range(3):
        with socket.create_connection((endpoint.hostname, endpoint.port), timeout=5) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.0\r\n"
                         b"X-Amz-Target: DynamoDB_20120810.ListTables\r\nContent-Length: 1000\r\n\r\n{\"Lim")
            time.sleep(0.2)  # the server has started reading the body
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    time.sleep(0.5)
    assert "TableNames" in aws_client(module_settings, "dynamodb").list_tables()


def test_a_missing_dynalite_install_is_named(tmp_path, monkeypatch):
    from orderflow_dev.local import stack as stack_module

    monkeypatch.setattr(stack_module, "NODE_DIR", tmp_path / "no-node")
    lonely = LocalStack(tmp_path, StackPorts(dynamodb=port_for.select_random()), only=("dynamodb",))
    with pytest.raises(ServiceFailed, match="dynamodb: dynalite is not installed .*make node"):
        lonely.up()
    assert lonely.status() == {"dynamodb": "down"}


def test_second_up_reuses_the_running_services(stack):
    pids_before = {name: (stack.root / "run" / f"{name}.pid").read_text() for name in stack.services}
    states = stack.up()
    assert set(states.values()) == {"running"}
    pids_after = {name: (stack.root / "run" / f"{name}.pid").read_text() for name in stack.services}
    assert pids_after == pids_before
    assert set(stack.status().values()) == {"ready"}


def _pids_of(root) -> list[int]:
    return [int(p.read_text()) for p in (root / "run").glob("*.pid")]


@pytest.mark.needs_stack  # starts Redis and memcached
def test_down_stops_only_what_it_started(tmp_path):
    ports = StackPorts(redis=port_for.select_random(), memcached=port_for.select_random())
    bystander = subprocess.Popen(["sleep", "60"])  # a process that is not the stack's
    small = LocalStack(tmp_path, ports, only=("redis", "memcached"))
    try:
        assert small.up() == {"redis": "started", "memcached": "started"}
        pids = _pids_of(tmp_path)
        assert len(pids) == 2
        assert set(small.down().values()) == {"stopped"}
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
        assert bystander.poll() is None
        assert set(small.status().values()) == {"down"}
        assert set(small.down().values()) == {"not running"}
    finally:
        bystander.kill()
        small.down()


def test_a_taken_port_is_reported_with_the_service_name(tmp_path, stack):
    taken = LocalStack(tmp_path, StackPorts(redis=stack.ports.redis), only=("redis",))
    try:
        taken.up()
    except Exception as exc:  # noqa: BLE001
        assert "redis" in str(exc) and str(stack.ports.redis) in str(exc)
    else:
        raise AssertionError("up() on a taken port must fail")
