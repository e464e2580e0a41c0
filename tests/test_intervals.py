import math

import pytest

from lrm_interp.evaluation.intervals import wilson_interval


def test_wilson_matches_the_closed_form_and_known_values():
    # 95 % Wilson interval of 81/263 (the example of statsmodels' proportion_confint): 0.2553 .. 0.3662
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.96**2 / (10 + 1.96**2), rel=1e-12)
    lo, hi = wilson_interval(150, 150)
    assert hi == 1.0 and 0.97 < lo < 0.98
    # the interval narrows like 1/sqrt(n)
    lo1, hi1 = wilson_interval(50, 100)
    lo4, hi4 = wilson_interval(200, 400)
    assert (hi1 - lo1) / (hi4 - lo4) == pytest.approx(2.0, rel=0.02)
    assert lo1 + hi1 == pytest.approx(1.0) and math.isclose(lo4 + hi4, 1.0)  # symmetric around 1/2
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
