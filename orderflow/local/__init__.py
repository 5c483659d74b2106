"""The local stack: real PostgreSQL, Redis, memcached, Tansu (Kafka API) and moto on loopback."""
from orderflow.local.stack import LocalStack, ServiceFailed, StackPorts

__all__ = ["LocalStack", "ServiceFailed", "StackPorts"]
