"""`relay.splice_min_literal` (proxy/relay/engine_splice.py): bytes, or null to never splice."""

from __future__ import annotations

import pytest

from proxy import config as config_mod
from proxy.config.operations import SPLICE_MIN_LITERAL
from support.configs import ONE_IMAP_RELAY

BASE = ONE_IMAP_RELAY


@pytest.mark.parametrize(("written", "value"), [("1", 1), ("16384", 16384), ("null", None)])
def test_the_setting(written: str, value: int | None):
    assert config_mod.loads(BASE + f"relay: {{splice_min_literal: {written}}}\n"
                            ).relay.splice_min_literal == value
    assert config_mod.loads(BASE).relay.splice_min_literal == SPLICE_MIN_LITERAL


@pytest.mark.parametrize("written", ["0", "-5", "64KB", "true"])
def test_a_size_below_one_or_not_an_integer_is_refused(written: str):
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE + f"relay:\n  splice_min_literal: {written}\n")
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith("line 8: relay.splice_min_literal: "), \
        caught.value.errors
