"""Per-connection database set-up and the few statements the ORM has no fast form for."""

from django.db.backends.signals import connection_created
from django.dispatch import receiver


@receiver(connection_created)
def _tune_sqlite(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            # A larger page cache and in-memory temp tables keep ingest off the disk.
            cursor.execute("PRAGMA cache_size=-65536")
            cursor.execute("PRAGMA temp_store=MEMORY")
