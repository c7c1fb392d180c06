"""The context a sequence gets when the user gives one, and when the model's own is used."""

import pytest
from exo_runtime.engine import DEFAULT_MAX_CONTEXT_LENGTH, EngineOptions, context_length_in_use


@pytest.mark.parametrize(
    ("asked", "cap", "trained", "in_use"),
    [
        (512, 4096, 32768, 512),  # asked for: used as is
        (8192, 4096, 2048, 8192),  # asked for beyond the cap and the training: still the user's
        (None, 4096, 32768, 4096),  # unset: the trained context, capped
        (None, 4096, 2048, 2048),  # unset and shorter than the cap: the trained one
        (None, 4096, None, 4096),  # the model does not say: the cap
        (None, 4096, 0, 4096),
    ],
)
def test_context_length_in_use(asked, cap, trained, in_use) -> None:
    options = EngineOptions(context_length=asked, max_context_length=cap)
    assert context_length_in_use(options, trained) == in_use


def test_the_default_cap_is_the_documented_one() -> None:
    assert EngineOptions().max_context_length == DEFAULT_MAX_CONTEXT_LENGTH == 4096
