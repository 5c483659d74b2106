"""Starts, checks and stops the services of the local stack.

Each service runs as a detached process (its own session) with its data and log under the stack's root
directory and a pid file there, so ``up`` in one command and ``down`` in a later one work, a second
``up`` reuses what already runs, and ``down`` stops only processes this stack started. mirakuru's
executors kill their children when the starting interpreter exits, which suits a test session but not a
CLI that must leave daemons running, hence this small manager.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from orderflow.config import Settings
from orderflow.model.mqtt import acl as mqtt_acl
from orderflow.model.mqtt import check_restaurant_id, new_password, password_line
from orderflow_dev import REPO_ROOT

PG_BIN = pathlib.Path(os.environ.get("ORDERFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
# Jars of the JVM services, resolved by `make jars` from dev/orderflow_dev/local/jvm/pom.xml.
JARS_DIR = pathlib.Path(os.environ.get("ORDERFLOW_JARS_DIR", REPO_ROOT / ".local" / "jars"))
# Node packages of the local stack (dynalite), installed by `make node` from dev/orderflow_dev/local/node/.
NODE_DIR = pathlib.Path(os.environ.get("ORDERFLOW_NODE_DIR", REPO_ROOT / ".local" / "node"))
# Apicurio Registry, unpacked by `make registry` from dev/orderflow_dev/local/jvm/apicurio/pom.xml, with the path of the
# Java 21+ that runs it in its file ``java``.
REGISTRY_DIR = pathlib.Path(os.environ.get("ORDERFLOW_REGISTRY_DIR",
                                           REPO_ROOT / ".local" / "apicurio"))
# The broker shares two cores with everything else, and every test session starts one: a small heap and
# a serial collector keep it at ~300 MB RSS.
KAFKA_JVM_OPTIONS = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:MaxMetaspaceSize=128m", "-Xss512k",
                     "-Djava.awt.headless=true"]
# The registry keeps a few schemas: a small heap (~290 MB RSS measured) and C1 only, which starts it sooner
# (its hot path is a cached look-up per new schema id, not compute).
REGISTRY_JVM_OPTIONS = ["-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                        "-XX:MaxMetaspaceSize=192m", "-Djava.awt.headless=true"]
# The Confluent-compatible API of Apicurio Registry 3 (what confluent-kafka's SchemaRegistryClient talks to).
REGISTRY_API_PATH = "/apis/ccompat/v7"


class ServiceFailed(RuntimeError):
    """A service did not start or did not become ready; the message names it and its log."""


@dataclasses.dataclass(frozen=True)
class StackPorts:
    kafka: int = 19092
    kafka_controller: int = 19093
    postgres: int = 15432
    redis: int = 16379
    memcached: int = 11311
    dynamodb: int = 18000
    moto: int = 15000
    mosquitto: int = 11883
    registry: int = 18081
    registry_management: int = 18082

    @classmethod
    def offset(cls, delta: int) -> StackPorts:
        base = cls()
        return cls(**{f.name: getattr(base, f.name) + delta for f in dataclasses.fields(cls)})

    @classmethod
    def free(cls) -> StackPorts:
        """Distinct free loopback ports, one per service (chosen by port-for)."""
        import port_for  # only needed here; keeps the module importable without it

        chosen: set[int] = set()
        values = {}
        for field in dataclasses.fields(cls):
            values[field.name] = port_for.select_random(exclude_ports=chosen)
            chosen.add(values[field.name])
        return cls(**values)


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java`` on PATH (Kafka 4 needs Java 17+)."""
    home = os.environ.get("JAVA_HOME")
    if home and (pathlib.Path(home) / "bin" / "java").exists():
        return str(pathlib.Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise ServiceFailed("kafka: no java on PATH (Java 17+ is needed; `make setup` checks it)")
    return found


def kafka_classpath() -> str:
    jars = JARS_DIR / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise ServiceFailed(f"kafka: no Kafka jars in {jars}; run `make jars` (Maven, dev/orderflow_dev/local/jvm/pom.xml)")
    return f"{jars}/*"


def registry_command(properties: list[str]) -> list[str]:
    """The registry's command line with the system ``properties`` (``-Dname=value``): the Java 21+ and the
    ``quarkus-run.jar`` ``make registry`` installed."""
    jar, java_file = REGISTRY_DIR / "quarkus-run.jar", REGISTRY_DIR / "java"
    if not jar.exists() or not java_file.exists():
        raise ServiceFailed(f"registry: Apicurio Registry is not installed in {REGISTRY_DIR}; run `make registry` "
                            "(Maven, dev/orderflow_dev/local/jvm/apicurio/pom.xml; needs Java 21+)")
    return [java_file.read_text().strip(), *REGISTRY_JVM_OPTIONS, *properties, "-jar", str(jar)]


def node_binary() -> str:
    found = shutil.which("node")
    if not found:
        raise ServiceFailed("dynamodb: no node on PATH (Node.js 20+ is needed for dynalite; `make setup` checks it)")
    return found


DYNALITE_SERVER = pathlib.Path(__file__).parent / "node" / "dynalite-server.js"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
# The bridge's MQTT account on a local stack (loopback only): orderflow.config's defaults.
MQTT_BRIDGE_USERNAME = Settings.mqtt_username
MQTT_BRIDGE_PASSWORD = Settings.mqtt_password


def dynalite_cli() -> str:
    cli = NODE_DIR / "node_modules" / "dynalite" / "cli.js"
    if not cli.exists():
        raise ServiceFailed(f"dynamodb: dynalite is not installed in {NODE_DIR}; run `make node` "
                            "(npm ci of dev/orderflow_dev/local/node/package-lock.json)")
    return str(cli)


def kafka_properties(ports: StackPorts, log_dir: pathlib.Path) -> str:
    """server.properties of a single-node KRaft broker (broker and controller in one process)."""
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{ports.kafka_controller}",
        f"listeners=PLAINTEXT://127.0.0.1:{ports.kafka},CONTROLLER://127.0.0.1:{ports.kafka_controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{ports.kafka}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={log_dir}",
        "num.partitions=4",
        # Keep every record: tests and demos replay sessions stamped days ago, which the default 7-day
        # time retention would delete under a running test (production retention: deploy/kafka-topics.yaml).
        "log.retention.ms=-1",
        # One node: every internal topic has one replica; fewer partitions than the defaults (50) make the
        # first consumer group and the first transaction start in milliseconds, not seconds.
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Few threads: the broker shares two cores with the stack, the pipelines and the tests.
        "num.network.threads=2",
        "num.io.threads=2",
        "background.threads=2",
        "num.recovery.threads.per.data.dir=1",
        "log.cleaner.threads=1",
        "",
    ])


def _kafka_cluster_id() -> str:
    """A Kafka Uuid as ``StorageTool random-uuid`` prints it (URL-safe base64 of 16 bytes, no padding).

    It may start with "-" (1 in 64): it is passed as ``--cluster-id=<id>``, never as a separate argument."""
    import base64
    import uuid

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root; as root we run it as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServiceFailed("postgres: running as root needs the 'postgres' user (apt-get install postgresql-15)") from exc
    return ["runuser", "-u", "postgres", "--"]


@dataclasses.dataclass
class Service:
    """One process of the stack: how to prepare it, start it and know that it is ready."""

    name: str
    port: int
    command: Callable[[], list[str]]
    ready: Callable[[], bool]
    prepare: Callable[[], None] = lambda: None
    env: dict[str, str] = dataclasses.field(default_factory=dict)


class LocalStack:
    """The services under ``root`` (data, logs, pid files), listening on ``ports`` on 127.0.0.1."""

    def __init__(self, root: str | os.PathLike = ".local", ports: StackPorts = StackPorts(),
                 only: tuple[str, ...] | None = None):
        self.root = pathlib.Path(root).absolute()
        self.ports = ports
        self.services = {s.name: s for s in self._services() if only is None or s.name in only}

    # -- endpoints, in the form orderflow.config.Settings takes them --------------------------------
    def environment(self) -> dict[str, str]:
        p = self.ports
        return {
            "ORDERFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{p.kafka}",
            "ORDERFLOW_POSTGRES_DSN": f"postgresql://orderflow@127.0.0.1:{p.postgres}/orderflow",
            "ORDERFLOW_REDIS_URL": f"redis://127.0.0.1:{p.redis}/0",
            "ORDERFLOW_MEMCACHED": f"127.0.0.1:{p.memcached}",
            "ORDERFLOW_DYNAMODB_ENDPOINT_URL": f"http://127.0.0.1:{p.dynamodb}",
            "ORDERFLOW_SNS_ENDPOINT_URL": f"http://127.0.0.1:{p.moto}",
            "ORDERFLOW_MQTT_URL": f"mqtt://127.0.0.1:{p.mosquitto}",
            "ORDERFLOW_MQTT_USERNAME": MQTT_BRIDGE_USERNAME,
            "ORDERFLOW_MQTT_PASSWORD": MQTT_BRIDGE_PASSWORD,
            "ORDERFLOW_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{p.registry}{REGISTRY_API_PATH}",
        }

    # -- lifecycle --------------------------------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> dict[str, str]:
        """Starts every service that is not running and waits until all are ready.

        Returns ``{service: "started" | "running"}``; raises ServiceFailed naming the failed service.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        states = {}
        for service in self.services.values():
            if self._pid_alive(service):
                # Ours and alive: reuse it (readiness is awaited below with the others).
                states[service.name] = "running"
                continue
            if _port_open(service.port):
                raise ServiceFailed(
                    f"{service.name}: port {service.port} is taken by a process this stack did not start"
                )
            self._start(service)
            states[service.name] = "started"
        deadline = time.monotonic() + timeout
        for service in self.services.values():
            self._wait_ready(service, deadline)
        return states

    def down(self, timeout: float = 15.0) -> dict[str, str]:
        """Stops the processes this stack started (by pid file) and nothing else; the registry first, as its
        shutdown hangs when the broker it keeps its schemas in has gone."""
        order = sorted(self.services, key=lambda name: name != "registry")
        return {name: self.stop(name, timeout=timeout) for name in order}

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> str:
        """Stops one service with ``sig`` (SIGKILL after ``timeout`` s); ``up()`` starts it again on the same
        data (Kafka and Postgres keep theirs on disk). Returns "stopped" or "not running"."""
        service = self.services[name]
        pid = self._pid(service)
        if pid is None or not process_alive(pid):
            self._pid_file(service).unlink(missing_ok=True)
            return "not running"
        # Each service leads its own process group (start_new_session), so this reaches its children.
        terminate_group(pid, sig, lambda: not process_alive(pid), timeout)
        # A killed multi-threaded process (the JVM) shows as a zombie while its other threads still exit
        # and hold its sockets: wait until the port is free, so that an immediate up() can take it again.
        deadline = time.monotonic() + timeout
        while _port_open(service.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._pid_file(service).unlink(missing_ok=True)
        return "stopped"

    def status(self) -> dict[str, str]:
        out = {}
        for service in self.services.values():
            alive = self._pid_alive(service)
            out[service.name] = "ready" if alive and service.ready() else ("starting" if alive else "down")
        return out

    def log_path(self, name: str) -> pathlib.Path:
        return self.root / "logs" / f"{name}.log"

    # -- MQTT accounts ------------------------------------------------------------------------------------
    @property
    def mqtt_password_file(self) -> pathlib.Path:
        return self.root / "mosquitto" / "passwords"

    def issue_mqtt_credentials(self, restaurant_ids: list[str]) -> dict[str, str]:
        """New MQTT passwords for ``restaurant_ids`` (account = the id; an earlier password of the id stops
        working), stored hashed in the broker's password file, which a running broker reloads (SIGHUP) at once.
        Returns ``{id: password}``: the only copy of the passwords."""
        issued = {check_restaurant_id(r): new_password() for r in restaurant_ids}
        path = self.mqtt_password_file
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in (path.read_text().splitlines(keepends=True) if path.exists() else [])
                if line.split(":", 1)[0] not in issued]
        if not any(line.startswith(f"{MQTT_BRIDGE_USERNAME}:") for line in kept):
            kept.insert(0, password_line(MQTT_BRIDGE_USERNAME, MQTT_BRIDGE_PASSWORD))
        fresh = path.with_suffix(".new")
        with open(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.writelines([*kept, *(password_line(r, pw) for r, pw in issued.items())])
        fresh.replace(path)  # atomic: a reload never reads half a file
        if "mosquitto" in self.services and self._pid_alive(self.services["mosquitto"]):
            pid = self._pid(self.services["mosquitto"])
            assert pid is not None
            os.kill(pid, signal.SIGHUP)
        return issued

    # -- internals ----------------------------------------------------------------------------------------
    def _pid_file(self, service: Service) -> pathlib.Path:
        return self.root / "run" / f"{service.name}.pid"

    def _pid(self, service: Service) -> int | None:
        return read_pid(self._pid_file(service))

    def _pid_alive(self, service: Service) -> bool:
        pid = self._pid(service)
        return pid is not None and process_alive(pid)

    def _start(self, service: Service) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        try:
            service.prepare()
        except (subprocess.CalledProcessError, OSError) as exc:
            raise ServiceFailed(f"{service.name}: preparation failed ({exc}); log: {self.log_path(service.name)}") from exc
        log = open(self.log_path(service.name), "ab")
        env = {**os.environ, **service.env}
        try:
            proc = subprocess.Popen(
                service.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=self.root,
            )
        except OSError as exc:
            raise ServiceFailed(f"{service.name}: could not start ({exc}); log: {self.log_path(service.name)}") from exc
        finally:
            log.close()
        self._pid_file(service).write_text(str(proc.pid))

    def _wait_ready(self, service: Service, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self._pid_alive(service):
                raise ServiceFailed(
                    f"{service.name}: process exited during start-up; log: {self.log_path(service.name)}\n"
                    + log_tail(self.log_path(service.name))
                )
            if service.ready():
                return
            time.sleep(0.1)
        raise ServiceFailed(
            f"{service.name}: not ready on port {service.port} in time; log: {self.log_path(service.name)}\n"
            + log_tail(self.log_path(service.name))
        )

    def _services(self) -> list[Service]:
        """The stack's services in start order (the registry after the broker it keeps its schemas in)."""
        return [self._postgres(), self._redis(), self._memcached(), self._kafka(), self._dynamodb(),
                self._mosquitto(), self._moto(), self._registry()]

    def _postgres(self) -> Service:
        port, data, sockets = self.ports.postgres, self.root / "pg", self.root / "pg-socket"

        def prepare() -> None:
            sockets.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                # The server runs as 'postgres': it must be able to reach its directories under our root.
                self.root.chmod(self.root.stat().st_mode | 0o711)
                shutil.chown(sockets, "postgres", "postgres")
            if (data / "PG_VERSION").exists():
                return
            data.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(data, "postgres", "postgres")
            with open(self.log_path("postgres"), "ab") as log:
                subprocess.run(
                    [*_as_postgres_user(), str(PG_BIN / "initdb"), "-D", str(data), "-U", "orderflow",
                     "--auth=trust", "--encoding=UTF8", "--no-instructions"],
                    check=True, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                )
            with open(data / "postgresql.conf", "a") as conf:
                # A local, disposable server: durability traded for speed.
                conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")

        return Service(
            "postgres", port,
            command=lambda: [*_as_postgres_user(), str(PG_BIN / "postgres"), "-D", str(data),
                             "-p", str(port), "-h", "127.0.0.1", "-k", str(sockets)],
            ready=lambda: _postgres_ready(port), prepare=prepare,
        )

    def _redis(self) -> Service:
        port = self.ports.redis
        return Service(
            "redis", port,
            command=lambda: [shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--save", "",
                             # The hot state survives a restart, as a production Redis's must (a
                             # restaurant's UNAVAILABLE status is written once): an append-only file,
                             # fsynced every second (a SIGKILL may lose the last second of writes).
                             "--appendonly", "yes", "--appendfsync", "everysec",
                             "--dir", str(self.root)],
            ready=lambda: _redis_ready(port),
        )

    def _memcached(self) -> Service:
        port = self.ports.memcached
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return Service(
            "memcached", port,
            command=lambda: [shutil.which("memcached") or "memcached", "-l", "127.0.0.1",
                             "-p", str(port), "-U", "0", "-m", "256", *user],
            ready=lambda: _memcached_ready(port),
        )

    def _kafka(self) -> Service:
        port, conf, data = self.ports.kafka, self.root / "kafka-config", self.root / "kafka"

        def prepare() -> None:
            conf.mkdir(parents=True, exist_ok=True)
            (conf / "server.properties").write_text(kafka_properties(self.ports, data))
            (conf / "log4j2.properties").write_text(_KAFKA_LOG4J2)
            if (data / "meta.properties").exists():
                return  # formatted on an earlier start: the log survives restarts
            with open(self.log_path("kafka"), "ab") as log:
                subprocess.run(
                    [java_binary(), "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
                     "-cp", kafka_classpath(), "kafka.tools.StorageTool", "format", "--ignore-formatted",
                     f"--cluster-id={_kafka_cluster_id()}", "-c", str(conf / "server.properties")],
                    check=True, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                )

        return Service(
            "kafka", port,
            command=lambda: [java_binary(), *KAFKA_JVM_OPTIONS, f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
                             "-cp", kafka_classpath(), "kafka.Kafka", str(conf / "server.properties")],
            ready=lambda: _kafka_ready(port), prepare=prepare,
        )

    def _dynamodb(self) -> Service:
        # dynalite: the DynamoDB API (with DynamoDB's validation) on a LevelDB kept on disk under <root>/dynamodb,
        # so that, like DynamoDB, a restart loses nothing (a SIGKILL included: each write is in LevelDB's log
        # before it is answered). Tables are ACTIVE at once instead of after dynalite's default 500 ms in CREATING.
        port = self.ports.dynamodb
        client = functools.cache(lambda: _dynamodb_client(port))
        return Service(
            "dynamodb", port,
            # Run through dynalite-server.js: a client that disconnects mid-request must not end it.
            command=lambda: [node_binary(), str(DYNALITE_SERVER), dynalite_cli(), "--host", "127.0.0.1",
                             "--port", str(port), "--path", str(self.root / "dynamodb"),
                             "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"],
            ready=lambda: _dynamodb_ready(port, client),
        )

    def _mosquitto(self) -> Service:
        # The restaurants' MQTT broker (their keep-alives and last wills; orderflow.bridge carries them into Kafka).
        port, directory = self.ports.mosquitto, self.root / "mosquitto"

        def prepare() -> None:
            (directory / "data").mkdir(parents=True, exist_ok=True)
            (directory / "acl").write_text(mqtt_acl(MQTT_BRIDGE_USERNAME))
            if not self.mqtt_password_file.exists():
                self.issue_mqtt_credentials([])  # the bridge's account alone
            (directory / "mosquitto.conf").write_text(mosquitto_config(self.ports, directory, self.mqtt_password_file))

        return Service("mosquitto", port, command=lambda: [MOSQUITTO, "-c", str(directory / "mosquitto.conf")],
                       ready=lambda: _port_open(port), prepare=prepare)

    def _moto(self) -> Service:
        # moto serves SNS (it records every SMS, which the tests read back).
        port = self.ports.moto
        return Service("moto", port,
                       command=lambda: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                       ready=lambda: _http_ok(f"http://127.0.0.1:{port}/moto-api/"))

    def _registry(self) -> Service:
        # Apicurio Registry, its schemas kept in this stack's Kafka (kafkasql: topics kafkasql-journal and
        # kafkasql-snapshots), so that they survive a restart like the records that name them. Both its ports on
        # loopback: Quarkus' management port would otherwise listen on 0.0.0.0:9000. Started after the broker (it
        # waits for it) and stopped before it (``down``).
        p = self.ports
        return Service(
            "registry", p.registry,
            command=lambda: registry_command([
                f"-Dquarkus.http.port={p.registry}", "-Dquarkus.http.host=127.0.0.1",
                f"-Dquarkus.management.port={p.registry_management}", "-Dquarkus.management.host=127.0.0.1",
                "-Dapicurio.storage.kind=kafkasql", f"-Dapicurio.kafkasql.bootstrap.servers=127.0.0.1:{p.kafka}"]),
            ready=lambda: _http_ok(f"http://127.0.0.1:{p.registry}{REGISTRY_API_PATH}/subjects"),
        )


# -- readiness probes: each False until its service answers, whatever the reason ---------------------------

def _postgres_ready(port: int) -> bool:
    if not _port_open(port):
        return False
    try:
        import psycopg

        dsn = f"postgresql://orderflow@127.0.0.1:{port}/postgres"
        with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'orderflow'").fetchone():
                conn.execute("CREATE DATABASE orderflow")
        return True
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


def _redis_ready(port: int) -> bool:
    try:
        import redis

        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


def _memcached_ready(port: int) -> bool:
    try:
        from pymemcache.client.base import Client

        return bool(Client(("127.0.0.1", port), connect_timeout=1, timeout=1).version())
    except Exception:  # noqa: BLE001
        return False


def _kafka_ready(port: int) -> bool:
    if not _port_open(port):
        return False
    try:
        from confluent_kafka.admin import AdminClient

        return bool(AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=2).brokers)
    except Exception:  # noqa: BLE001
        return False


def _dynamodb_client(port: int):
    import boto3
    from botocore.config import Config

    return boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="orderflow", aws_secret_access_key="orderflow",
                        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))


def _dynamodb_ready(port: int, client: Callable[[], Any]) -> bool:
    if not _port_open(port):
        return False
    try:
        client().list_tables(Limit=1)
        return True
    except Exception:  # noqa: BLE001
        return False


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except Exception:  # noqa: BLE001
        return False


def mosquitto_config(ports: StackPorts, directory: pathlib.Path, password_file: pathlib.Path) -> str:
    """mosquitto.conf of the local broker: loopback only, accounts and ACL, persistence."""
    return "\n".join([
        "per_listener_settings false",
        f"listener {ports.mosquitto} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {directory / 'acl'}",
        # Root would otherwise switch to the 'mosquitto' user, which cannot read the stack's directory.
        *(["user root"] if os.geteuid() == 0 else []),
        # The bridge's persistent session (its queued QoS 1 messages) and the retained statuses survive a
        # restart: saved on a clean stop and every 10 s, so a SIGKILL loses at most the last 10 s of both.
        "persistence true",
        f"persistence_location {directory / 'data'}/",
        "autosave_interval 10",
        # The defaults (1,000 queued, 20 in flight per client) drop messages beyond them: under a mass
        # disconnect the bridge's queue takes one last will per restaurant (measured with the defaults: 1,185 of
        # 6,000 wills arrived). 0 in flight = no limit (the bridge's Receive Maximum still applies).
        "max_queued_messages 1000000",
        "max_inflight_messages 0",
        "max_packet_size 65536",
        "max_keepalive 600",
        # Not one line per connection: 100,000 restaurants connect.
        "connection_messages false",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
    ])


# Broker log to stdout (the service's log file): warnings, and INFO for start and stop only.
_KAFKA_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.coordinator.name = org.apache.kafka.coordinator
logger.coordinator.level = warn
logger.log.name = kafka.log
logger.log.level = warn
logger.cluster.name = org.apache.kafka.storage
logger.cluster.level = warn
"""


@contextlib.contextmanager
def temporary_stack(prefix: str = "test-stack-", base_dir: str | os.PathLike = ".local", timeout: float = 120,
                    only: tuple[str, ...] | None = None) -> Iterator[LocalStack]:
    """A throw-away stack: a fresh directory ``<base_dir>/<prefix>*``, free loopback ports, started (up to
    ``timeout`` seconds) and yielded; always stopped and its directory removed."""
    base = pathlib.Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    root = tempfile.mkdtemp(prefix=prefix, dir=base)
    stack = LocalStack(root, StackPorts.free(), only=only)
    try:
        stack.up(timeout=timeout)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


def read_pid(path: str | os.PathLike) -> int | None:
    """The pid recorded in a pid file, or None when the file is missing or not a number."""
    try:
        return int(pathlib.Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone; another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def signal_group(pgid: int, sig: int) -> None:
    """Sends ``sig`` to the process group ``pgid`` (every process of the stack leads its own); gone is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_exists(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is left (a zombie member counts until it is reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still runs (zombies, which only wait for their parent to
    reap them, do not count)."""
    if not group_exists(pgid):
        return False
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def terminate_group(pgid: int, sig: int, gone: Callable[[], bool], timeout: float = 15.0) -> None:
    """Sends ``sig`` to the group, and SIGKILL if ``gone()`` is still false after ``timeout`` s; returns once
    ``gone()`` holds (or a second timeout passed after SIGKILL)."""
    signal_group(pgid, sig)
    for final in (False, True):
        deadline = time.monotonic() + timeout
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        if gone() or final:
            return
        signal_group(pgid, signal.SIGKILL)


def log_tail(path: pathlib.Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
