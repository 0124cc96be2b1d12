"""Coverage-guided fuzzing of one target of ``tests/fuzz/targets.py`` with
atheris (libFuzzer): ``make fuzz TARGET=flv_ingest SECONDS=600``, or
``python -m tests.fuzz.fuzz TARGET [libFuzzer options] [corpus dirs]``.

``rtmpd`` is instrumented for coverage; the target may raise only
:class:`RemoteProtocolError`, so any other exception (or a hang, or memory
past libFuzzer's ``-rss_limit_mb``) is a crash: libFuzzer saves the input
(``make fuzz`` puts it in ``tests/fuzz/crashes/<target>/``). Once the bug is
fixed, copy the input into ``tests/fuzz/corpus/<target>/``: the normal suite
(``tests/unit/test_fuzz_properties.py``) runs every seed there, so it stays
a regression case. ``make fuzz`` reads the seeds from
``tests/fuzz/corpus/<target>/`` and keeps what it finds in
``tests/fuzz/work/<target>/`` (not in git).

atheris is the ``fuzz`` extra (``pip install -e '.[fuzz]'``); ``make test``
does not need it.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports(include=["rtmpd"]):
    from tests.fuzz.targets import ALLOWED, TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.fuzz TARGET [libFuzzer options]\n"
                 f"targets: {' '.join(sorted(TARGETS))}")
    target = TARGETS[sys.argv[1]]

    def one_input(data: bytes) -> None:
        with contextlib.suppress(ALLOWED):
            target(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
