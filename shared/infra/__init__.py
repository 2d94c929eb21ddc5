"""The infrastructure launcher used by ``waybill up`` and the test fixtures.

``start_infrastructure`` finds or starts a Kafka broker and a PostgreSQL server
(external, containers, or the embedded ones); ``provision_service_database`` gives a
service its own role and schema.
"""

from shared.infra._process import die_with_parent
from shared.infra.kafka import EmbeddedKafka, KafkaStartError
from shared.infra.launcher import (
    DATABASE_URL_ENV,
    KAFKA_BOOTSTRAP_ENV,
    InfraKind,
    Infrastructure,
    docker_engine_available,
    start_infrastructure,
)
from shared.infra.postgres import EmbeddedPostgres, PostgresStartError
from shared.infra.provision import provision_service_database, service_role, service_schema

__all__ = [
    "DATABASE_URL_ENV",
    "KAFKA_BOOTSTRAP_ENV",
    "EmbeddedKafka",
    "EmbeddedPostgres",
    "InfraKind",
    "Infrastructure",
    "KafkaStartError",
    "PostgresStartError",
    "die_with_parent",
    "docker_engine_available",
    "provision_service_database",
    "service_role",
    "service_schema",
    "start_infrastructure",
]
