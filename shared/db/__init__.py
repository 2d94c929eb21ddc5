"""PostgreSQL access: the pool, migrations, and the unit of work with inbox and outbox."""

from shared.db.migrations import MigrationSource, apply_migrations, shared_migrations
from shared.db.pool import create_pool, is_transient_error
from shared.db.uow import UnitOfWork, unit_of_work

__all__ = [
    "MigrationSource",
    "UnitOfWork",
    "apply_migrations",
    "create_pool",
    "is_transient_error",
    "shared_migrations",
    "unit_of_work",
]
