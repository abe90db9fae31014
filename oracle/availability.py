"""Whether the oracle (vLLM) is importable, and what a test does when it is not.

Without vLLM the differential tests skip, saying why, so the normal suite runs anywhere; CI sets
``SERVESIM_REQUIRE_ORACLE=1`` after installing the oracle environment, and then a missing or
broken vLLM fails the tests instead of skipping them silently.
"""
from __future__ import annotations

import os


def vllm_driver_or_skip():
    """The :mod:`servesim.oracle.vllm_driver` module, or a pytest skip (a failure when
    ``SERVESIM_REQUIRE_ORACLE=1``) naming why vLLM cannot be used."""
    import pytest

    try:
        from . import vllm_driver
    except Exception as exc:  # ImportError, or a vLLM that imports but breaks (mismatched torch)
        why = (f"vLLM oracle unavailable ({type(exc).__name__}: {exc}); install it with oracle/install.sh "
               "(docs/oracle.md)")
        if os.environ.get("SERVESIM_REQUIRE_ORACLE") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why, allow_module_level=True)
    return vllm_driver
