"""The local stack on loopback: PostgreSQL, Redis, memcached, Apache Kafka (KRaft), dynalite (DynamoDB API) and
moto (SNS)."""
from orderflow_dev.local.stack import LocalStack, ServiceFailed, StackPorts, temporary_stack

__all__ = ["LocalStack", "ServiceFailed", "StackPorts", "temporary_stack"]
