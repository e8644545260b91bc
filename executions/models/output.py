from django.db import models

from executions.models.executions import Execution


class OutputType(models.TextChoices):
    STDOUT = "stdout"
    STDERR = "stderr"
    OTHER = "other"


class OutputChunk(models.Model):
    """One line of output (or a piece of one, see `data`), in a gapless per-execution order.

    `data` keeps the line's newline. A chunk whose `data` does not end with a newline is
    continued by the next chunk of the same `output_type`: a partial line flushed after
    silence, or a line longer than MAX_CHUNK_BYTES cut in pieces. Concatenating `data` in
    `seq` order for one `output_type` gives back that stream's exact (decoded, masked) text.
    """

    id = models.BigAutoField(primary_key=True)
    # No database-level constraint: checking it costs more than half of each row's insert
    # time (bench/ingest.py). Only the runner that owns an execution writes its chunks, and
    # deletes go through the ORM (a fast DELETE … WHERE execution_id IN …), so no orphan arises.
    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="output", db_constraint=False
    )
    seq = models.BigIntegerField()
    output_type = models.CharField(max_length=8, choices=OutputType.choices)
    data = models.TextField()
    timestamp = models.DateTimeField()

    class Meta:
        ordering = ["execution", "seq"]
        constraints = [
            # Also the index every replay and backfill reads: `WHERE execution_id=… AND seq>…`.
            models.UniqueConstraint(fields=["execution", "seq"], name="output_execution_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.execution_id}#{self.seq}"

    @property
    def continues(self) -> bool:
        """True when the next chunk of this type continues this line."""
        return not self.data.endswith("\n")
