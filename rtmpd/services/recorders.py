"""The recorder services for ``twistd rtmpd``: ``--record`` parsing and
the service list that ``makeService`` adds to its MultiService."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application import service
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtmpd.registry import StreamRegistry
from rtmpd.services.flvrec import FlvRecorder
from rtmpd.services.fmp4rec import Fmp4Recorder, Fmp4SeparateRecorder
from rtmpd.services.hls import HlsRecorder
from rtmpd.services.recorder import FORMATS, Recorder, RecorderSettings
from rtmpd.services.recovery import recover
from rtmpd.services.retention import Retention, RetentionSettings
from rtmpd.services.writer import ImmediateDiskWriter, ThreadedDiskWriter, WriterService

log = Logger()

RECORDER_CLASSES: dict[str, type[Recorder]] = {
    "hls": HlsRecorder,
    "flv": FlvRecorder,
    "fmp4": Fmp4Recorder,
    "fmp4-separate": Fmp4SeparateRecorder,
}


def parse_record_option(value: str) -> tuple[str, ...]:
    """``"hls,flv"`` -> ``("hls", "flv")``; ``"none"`` -> ``()``.

    Raises ValueError naming the bad entry and the choices.
    """
    names = [part.strip().lower() for part in str(value).split(",") if part.strip()]
    if names == ["none"]:
        return ()
    if not names:
        raise ValueError("--record needs hls, flv, fmp4, fmp4-separate (comma-separated) or none")
    for name in names:
        if name not in FORMATS:
            raise ValueError(
                f"--record: unknown format {name!r}; choose from "
                f"{', '.join(FORMATS)} (comma-separated) or none"
            )
    return tuple(dict.fromkeys(names))


def _log_recovery(lines: list[str]) -> None:
    for line in lines:
        log.info("{line}", line=line)


def _recovery_failed(failure: Failure) -> None:
    log.error("crash recovery failed: {error}", error=failure.getErrorMessage())


def make_recorders(
    registry: StreamRegistry,
    reactor: object,
    *,
    root: str,
    formats: str | Sequence[str],
    fragment_ms: int,
    window: int,
    retention: RetentionSettings | None = None,
) -> list[service.Service]:
    """The writer service, retention (``retention``: its limits; default: only
    the free-disk floor) then one recorder per format (empty for none);
    ``formats`` as :func:`parse_record_option` returns them, or its input.

    Add them to the parent in this order: the parent stops children in
    reverse, so the recorders queue their last jobs before the writer stops.
    With a reactor without threads (a test fake), jobs run inline.
    """
    if isinstance(formats, str):
        formats = parse_record_option(formats)
    if not formats:
        return []
    if IReactorThreads.providedBy(reactor):
        writer: ThreadedDiskWriter | ImmediateDiskWriter = ThreadedDiskWriter(
            reactor.callFromThread
        )
    else:
        writer = ImmediateDiskWriter()
    writer_service = WriterService(writer)
    writer_service.setName("record-writer")

    def start_recovery() -> None:
        d = writer.submit(lambda: recover(root))
        d.addCallbacks(_log_recovery, _recovery_failed)

    writer_service.call_when_started(start_recovery)
    settings = RecorderSettings(root=root, fragment_ms=fragment_ms, window=window)
    keeper = Retention(root, retention or RetentionSettings(), writer, reactor)  # type: ignore[arg-type]
    services: list[service.Service] = [writer_service, keeper]
    for fmt in formats:
        recorder = RECORDER_CLASSES[fmt](registry, writer, settings)
        recorder.may_record = keeper.may_record
        recorder.on_finished = keeper.recording_finished
        services.append(recorder)
    return services
