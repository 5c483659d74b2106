"""The local stack: real PostgreSQL, Redis, memcached, Apache Kafka (KRaft) and moto on loopback."""
from orderflow.local.stack import LocalStack, ServiceFailed, StackPorts, temporary_stack

__all__ = ["LocalStack", "ServiceFailed", "StackPorts", "temporary_stack"]
