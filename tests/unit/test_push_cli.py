"""rtmpd-push's command line: the progress display, exit statuses and one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from rtmpd.client.cli import ProgressDisplay, main
from rtmpd.client.pacing import EXIT_DISCONNECTED, EXIT_INPUT, EXIT_OK, EXIT_REFUSED
from tests.unit.test_push_pacing import Harness

# -- progress -----------------------------------------------------------------------


def test_progress_redraws_one_line_on_a_tty_and_logs_lines_otherwise() -> None:
    h = Harness()
    h.pusher.start()
    h.ready()
    tty, log = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (log, False)):
        display = ProgressDisplay(h.pusher, h.clock, out, tty=is_tty)
        display.start()
    h.run_for(2.5)
    assert tty.getvalue().count("\r") == 2 and "\n" not in tty.getvalue()
    last = tty.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("0:00:01 / 0:00:02") and "reconnects 0" in last
    assert log.getvalue() == ""
    h.run_for(3.0)
    assert log.getvalue().count("\n") == 1 and "kbit/s" in log.getvalue()


# -- command line -------------------------------------------------------------------


def one_line_error(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    status = main(argv, reactor=object(), stderr=err)
    return status, err.getvalue()


def test_damaged_input_exits_2_with_one_line(tmp_path: Path) -> None:
    data = (Path(__file__).parent.parent / "data" / "mp4" / "tiny_bframes.mp4").read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[:2000])
    status, text = one_line_error([str(bad), "rtmp://127.0.0.1/live/x"])
    assert status == EXIT_INPUT
    assert text.count("\n") == 1 and text.startswith("rtmpd-push: error: ") and "cut.mp4" in text


def test_unsupported_input_type_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "clip.mkv").write_bytes(b"\x1a\x45\xdf\xa3")
    status, text = one_line_error([str(tmp_path / "clip.mkv"), "rtmp://127.0.0.1/live/x"])
    assert status == EXIT_INPUT and text.count("\n") == 1 and "unknown input type" in text


def test_bad_url_exits_2_with_one_line() -> None:
    status, text = one_line_error(["x.flv", "udp://127.0.0.1/live/x"])
    assert status == EXIT_INPUT and text.count("\n") == 1 and "scheme" in text


@pytest.mark.parametrize("option", [["--speed", "20"], ["--speed", "0"], ["--start", "-1"]])
def test_out_of_range_options_exit_2(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["x.flv", "rtmp://h/live/x", *option])
    assert info.value.code == 2


def test_help_documents_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for status in (EXIT_OK, EXIT_DISCONNECTED, EXIT_INPUT, EXIT_REFUSED):
        assert f"  {status}  " in out
    assert "--no-reconnect" in out and "--loop" in out and "--start" in out
