"""Where the array front puts the state it allocates: at the param's offset within a 64-byte
line, so that the kernels' vector loop (aligned to the param) reads every stream aligned."""

from __future__ import annotations

import fastoptim
import numpy as np
import pytest


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 3, 5])
def test_state_shares_the_params_cache_line_offset(dtype: type, offset: int) -> None:
    base = np.zeros(5000 + 8, dtype)
    param = base[offset : offset + 5000]  # any offset NumPy allows
    grad = np.ones(5000, dtype)
    opt = fastoptim.Adam([param], lr=0.1, amsgrad=True)
    opt.step([grad])
    state = opt.state[0]
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        buf = state[key]
        assert buf.flags.c_contiguous and buf.shape == param.shape and buf.dtype == param.dtype
        assert buf.ctypes.data % 64 == param.ctypes.data % 64
    # the offset changes where the vector loop starts, never the numbers
    reference = np.zeros(5000, dtype)
    ref_opt = fastoptim.Adam([reference], lr=0.1, amsgrad=True)
    ref_opt.step([grad])
    np.testing.assert_array_equal(param, reference)


def test_loaded_state_is_placed_like_new_state() -> None:
    param = np.zeros(4096 + 3, np.float32)[3:]
    opt = fastoptim.Adagrad([param])
    opt.step([np.ones_like(param)])
    other = fastoptim.Adagrad([param])
    other.load_state_dict(opt.state_dict())
    assert other.state[0]["sum"].ctypes.data % 64 == param.ctypes.data % 64
    np.testing.assert_array_equal(other.state[0]["sum"], opt.state[0]["sum"])
