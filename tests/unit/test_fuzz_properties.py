"""Every network and file parser, fed arbitrary bytes and mutated real
captures, gives results or its module's error (RemoteProtocolError), never
another exception and never a loop (tests/fuzz/targets.py; the same targets
run coverage-guided under atheris with ``make fuzz``).

Deterministic: tests/conftest.py makes Hypothesis derandomized.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import ALLOWED, TARGETS, pieces

CORPUS = Path(__file__).parent.parent / "fuzz" / "corpus"


def seeds(name: str) -> list[bytes]:
    directory = CORPUS / name
    return [p.read_bytes() for p in sorted(directory.iterdir())] if directory.is_dir() else []


def run(name: str, data: bytes) -> None:
    with contextlib.suppress(ALLOWED):
        TARGETS[name](data)


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A seed of ``name`` with a few bytes changed, inserted or cut off."""
    data = bytearray(draw(st.sampled_from(seeds(name))))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


def test_every_target_has_seeds_from_real_captures() -> None:
    assert {p.name for p in CORPUS.iterdir()} == set(TARGETS)
    assert all(seeds(name) for name in TARGETS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_parses_or_raises_the_module_error(name: str) -> None:
    for seed in seeds(name):
        run(name, seed)


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=150)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_give_results_or_the_module_error(name: str, data: bytes) -> None:
    run(name, data)


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=150)
@given(data=st.data())
def test_mutated_captures_give_results_or_the_module_error(name: str, data: st.DataObject) -> None:
    run(name, data.draw(mutated(name)))


@settings(max_examples=100)
@given(data=st.binary(max_size=600))
def test_pieces_cover_the_input_in_order(data: bytes) -> None:
    assert b"".join(pieces(data)) == data[1:]
    assert all(len(p) <= data[0] + 1 for p in pieces(data))
