"""orderflow: streaming pipelines on Apache Beam for asset orders and restaurant presence.

Flink/Dataflow workers install this package through ``--setup_file ./setup.py``, so every runtime
dependency is pinned here and nowhere else.
"""
from setuptools import find_namespace_packages, setup

INSTALL_REQUIRES = [
    "apache-beam[gcp,aws]==2.77.0",
    # The schema registry client (SchemaRegistryClient; AvroSerializer/AvroDeserializer for ecosystem checks).
    "confluent-kafka[schemaregistry]==2.16.1",
    # The HTTP client of that registry client (its extra's own requirement on Python 3.10+): orderflow.clients
    # catches its TransportError, so it is pinned here as a direct dependency.
    "httpx2==2.17.0",
    "fastavro==1.13.1",
    "redis==8.1.0",
    # redis-py's C reply parser (used when installed): replies of 100-1,000 hashes per status request, and every
    # restaurant's for the dashboard's sampler, parsed in C instead of Python (benchmarks/README.md, issue 26).
    "hiredis==3.5.0",
    "pymemcache==4.0.0",
    "boto3==1.44.5",
    "psycopg[binary,pool]==3.3.9",
    "orjson==3.13.0",
    "tqdm==4.70.1",  # progress bars of the generators
    "python-json-logger==4.2.0",  # JSON log lines of the API and the pipelines (orderflow/logs.py)
    "paho-mqtt==2.2.0",  # the MQTT -> Kafka bridge (orderflow/bridge): manual acknowledgement, MQTT 5
]

EXTRAS_REQUIRE = {
    # Processes of the local stack: the moto server (SNS; DynamoDB is dynalite, `make node`), mirakuru, port-for to pick free
    # ports (StackPorts.free, temporary_stack). Kafka is a JVM service from Maven (`make jars`).
    "local": ["moto[server]==5.2.5", "mirakuru==3.1.0", "port-for==1.1.1"],
    "api": ["fastapi==0.165.0", "uvicorn==0.54.0", "httptools==0.9.0", "prometheus-client==0.26.0"],
    "dev": [
        "pytest==9.2.0",
        "pytest-postgresql==10.0.0",
        "pytest-redis==5.0.1",
        "hypothesis==6.170.15",
        "ruff==0.17.6",
        "mypy==2.4.1",  # `mypy`: the packages listed in setup.cfg (tests/test_static_checks.py)
        # HTTP API tests and benchmark: client, OpenAPI property tests, browser driver (Debian chromium).
        "httpx==0.28.1",
        "aiohttp==3.14.5",
        "schemathesis==4.32.5",
        "playwright==1.65.2",
        # benchmarks/peers.py: Bytewax as a peer (Quix Streams cannot share this venv: peers-requirements.txt),
        # py-spy for its --profile.
        "bytewax==0.21.1",
        "py-spy==0.4.3",
    ],
}

setup(
    name="orderflow",
    version="0.1.0",
    description="Streaming pipelines on Apache Beam: asset order pricing and restaurant presence",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["orderflow", "orderflow.*"]),
    # orderflow only: the developer's tools (orderflow_dev: local stack, generators, demo) are a distribution
    # of their own under dev/, which workers never install (tests/test_packaging.py).
    package_data={"orderflow": ["schemas/*.avsc", "schemas/history/*.avsc", "migrations/*.sql", "api/*.html",
                              "api/static/vendor/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
