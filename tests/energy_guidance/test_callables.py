"""callables.py: check_finite, which every model output, energy and guided step passes through.

Its fast path reads one sum (finite exactly when every term is, unless it overflows); these
cases pin the rows it names, whatever the mix of NaN, +inf and -inf, and a finite tensor whose
sum overflows.
"""

import pytest
import torch

from energy_guidance.callables import ENERGY_VALUE, MODEL_OUTPUT, NonFiniteError, check_finite


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_values_whose_sum_overflows_pass(dtype):
    largest = torch.finfo(dtype).max
    value = torch.full((4, 3), largest, dtype=dtype)
    assert not bool(torch.isfinite(value.sum()))  # the fast path cannot decide it
    check_finite(value, MODEL_OUTPUT)
    check_finite(torch.tensor(largest, dtype=dtype), MODEL_OUTPUT)


@pytest.mark.parametrize(
    "bad_values",
    [[float("nan")], [float("inf")], [-float("inf")], [float("inf"), -float("inf")], [float("nan"), 1e308]],
    ids=["nan", "inf", "-inf", "inf and -inf", "nan and a huge value"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_row_with_a_non_finite_value_is_named(bad_values, dtype):
    value = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = [1, 4][: len(bad_values)]
    for row, bad in zip(rows, bad_values, strict=True):
        value[row, 2] = bad
    value = value.to(dtype)  # 1e308 is inf in float32: its row is named there as well
    with pytest.raises(NonFiniteError) as info:
        check_finite(value, ENERGY_VALUE)
    expected = torch.zeros(6, dtype=torch.bool)
    expected[rows] = True
    expected &= ~torch.isfinite(value).all(1)
    assert torch.equal(info.value.bad, expected) and info.value.count == int(expected.sum())


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_an_empty_integer_or_complex32_tensor_passes_and_a_scalar_is_one_sample():
    check_finite(torch.empty(0, 3), MODEL_OUTPUT)
    check_finite(torch.arange(6).reshape(2, 3), MODEL_OUTPUT)
    check_finite(torch.ones(2, 3, dtype=torch.complex32), MODEL_OUTPUT)  # no sum on the CPU: elementwise
    with pytest.raises(NonFiniteError) as info:
        check_finite(torch.tensor(float("nan")), ENERGY_VALUE)
    assert info.value.count == 1


def test_a_half_precision_overflow_is_reported_as_such():
    value = torch.ones(3, 2, dtype=torch.float16)
    value[2, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="float16 overflow") as info:
        check_finite(value, MODEL_OUTPUT)
    assert info.value.bad.tolist() == [False, False, True]
