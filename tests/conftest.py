"""Hypothesis runs the same examples on every run (``derandomize``): a CI
failure is a real one and reproduces, and no example database is needed.
``HYPOTHESIS_PROFILE=explore`` draws new random examples (and more of them)
for a local hunt; a failure found that way becomes an explicit test case."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          print_blob=True)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
