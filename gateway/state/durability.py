"""Wiring of durable ingest for the daemon (``[state]`` config): the ingest log, the acceptor
that sources emit into, the checkpoints of device state, and the start-up restore + replay.

Start (``Durability.open`` then ``restore`` before the pipeline thread starts, ``replay``
after it started and before any source starts):

1. the ingest log is opened (a torn last write is cut off);
2. the checkpoint's devices are installed (``gateway.state.codec``), and the log position it
   reflects becomes the pipeline's ``handled_seq``; a checkpoint from another model keeps
   windows, standardisation, last seen and alert-policy state, and the score profiles
   recalibrate (logged);
3. every log record after that position goes through the pipeline again, so the state is
   what it would have been without the crash (outputs of records handled before the crash
   but after the checkpoint come again: at-least-once, same alert idempotency keys);
   the keys of every record the log holds refill the redelivery check.

Stop: ``stop_intake`` once the sources stopped (what they hold is committed, the log
closes), then ``close`` after the pipeline drained and telemetry was written: a final
checkpoint as of the last handled record. A SIGKILL skips this: the periodic
checkpoint plus the log replay cover it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from gateway.config import StateSection
from gateway.ingest.accept import IngestAcceptor, SourceEmitter
from gateway.ingest.log import IngestLog
from gateway.metrics import Metrics
from gateway.pipeline.loop import Pipeline
from gateway.state.checkpoint import Checkpointer, CheckpointStore
from gateway.state.codec import DeviceStateCodec

log = logging.getLogger(__name__)


class Durability:
    def __init__(self, state_dir: Path, options: StateSection, pipeline: Pipeline, metrics: Metrics,
                 barriers: list[Callable[[], object]] | None = None) -> None:
        """``options``: the ``[state]`` section. ``barriers`` run on the pipeline thread before
        each checkpoint (the telemetry fan-out's flush: telemetry of the readings a checkpoint
        covers must be in the outbox, or a crash right after it would lose that telemetry)."""
        self.options = options
        self.pipeline = pipeline
        self.metrics = metrics
        self.log = IngestLog(state_dir / "ingest-log", metrics, segment_bytes=options.segment_bytes,
                             keep_segments=options.keep_segments, fsync=options.fsync)
        self.acceptor = IngestAcceptor(self.log, pipeline.ingest_logged, metrics,
                                       dedup_horizon=options.dedup_horizon, deliver_chunk=pipeline.ingest_logged_chunk)
        self.codec = DeviceStateCodec(pipeline.windows, pipeline.engine, pipeline.policy)
        self.checkpointer = Checkpointer(CheckpointStore(state_dir / "checkpoint.sqlite", metrics), self.codec, metrics,
                                         options.checkpoint_interval_s,
                                         on_written=self.acceptor.release_through, barriers=barriers)
        pipeline.checkpointer = self.checkpointer
        metrics.describe("ingest_log_replayed_total", "Ingest-log records handled again after a restart")

    def restore(self) -> None:
        """Install the checkpoint (before the pipeline thread starts)."""
        started = time.perf_counter()
        seq, report = self.checkpointer.restore()
        self.pipeline.handled_seq = seq
        if report is None:
            log.info("no checkpoint of device state: every device calibrates from its readings")
            return
        for note in report.notes:
            log.warning("checkpoint: %s", note)
        log.info("checkpoint at ingest-log position %d restored in %.2f s: %s", seq,
                 time.perf_counter() - started, report.summary())

    def replay(self) -> int:
        """Hand the log records after the checkpoint to the (running) pipeline."""
        started = time.perf_counter()
        n = self.acceptor.replay(self.pipeline.handled_seq)
        self.metrics.inc("ingest_log_replayed_total", n)
        if n:
            log.info("replaying %d ingest-log records after position %d (queued in %.2f s)", n,
                     self.pipeline.handled_seq, time.perf_counter() - started)
        self.acceptor.start()
        return n

    def emitter(self, source: object, name: str) -> SourceEmitter:
        """The ``emit`` for a source: duplicates checked and a failed write dropped when the
        source's transport redelivers (``redelivers`` attribute, MQTT), else not."""
        return self.acceptor.emitter(name, redelivers=bool(getattr(source, "redelivers", False)))

    def stop_intake(self) -> None:
        """After the sources stopped, while the pipeline still runs: commit what a source
        still holds and stop the commit timer."""
        self.acceptor.close()

    def close(self, pipeline_done: bool) -> None:
        """Final checkpoint (when the pipeline finished its queue and telemetry was written),
        then close the checkpoint store."""
        self.checkpointer.close(self.pipeline.handled_seq if pipeline_done else None)
