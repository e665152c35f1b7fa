"""The evaluated policies' settings: AEPO's guidance rescale by action dimension. (The policies
themselves run in tests/recipes/test_aepo.py's end-to-end runs.)"""

from energy_guidance.recipes.policies import resolve_rescale


def test_rescale_is_on_for_actions_of_dimension_two_and_more():
    """On is AEPO's rescale, ``rescale="paper"`` (``True`` would cap the guidance term instead)."""
    assert resolve_rescale("auto", 1) is False and resolve_rescale("auto", 2) == "paper"
    assert resolve_rescale("off", 6) is False and resolve_rescale("on", 1) == "paper"
