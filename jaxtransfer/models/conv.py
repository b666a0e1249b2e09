"""A drop-in `conv_general_dilated` for `nn.Conv` that computes few-input-channel convolutions as taps.

Why: XLA:CPU runs a convolution whose input has one or three channels (the first layer on grey or RGB
images) at a small fraction of its usual FLOP rate — about as long as a neighbouring layer with many
times the FLOPs (numbers in BUILD_NOTES.md "Performance"; experiments/benchmarks/convs.py measures them).
With kh·kw·C_in ≤ 27 the convolution is a short sum of shifted images times kernel taps,
`Σ_ijc x[:, i:, j:, c] · w[i, j, c]`, which XLA fuses into one elementwise loop, several times faster.
The backward pass keeps XLA's own transposed convolutions (`jax.linear_transpose` of
`lax.conv_general_dilated`), which are not slow here.

Anything else — strides, dilation, groups, more taps, other layouts — goes to `lax.conv_general_dilated`
unchanged, so `nn.Conv(..., conv_general_dilated=conv_general_dilated)` has the same parameters and
computes the same function (to float rounding: the sum runs in a different order) as `nn.Conv`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

MAX_TAPS = 27          # kh · kw · C_in up to a 3×3 kernel on RGB input
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _as_pads(padding: Any, x_shape: Sequence[int], w_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], w_shape[0:2], (1, 1), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _lax_conv(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
  return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tap_conv(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """Stride-1 NHWC × HWIO convolution as a sum of kh·kw·C_in shifted, scaled copies of the input."""
  kh, kw, cin, _ = w.shape
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  return sum(xp[:, i:i + oh, j:j + ow, c:c + 1] * w[i, j, c]
             for i in range(kh) for j in range(kw) for c in range(cin))


def _tap_conv_fwd(x, w, pads):
  """Keeps only what the backward needs: w for dx if x is differentiated, x for dw if w is."""
  y = _tap_conv(x.value, w.value, pads)
  return y, (x.value if w.perturbed else None, w.value if x.perturbed else None)


def _tap_conv_bwd(pads, res, g):
  """XLA's transposed convolutions (the gradients `lax.conv_general_dilated` would give); none for an
  input that is not differentiated — the first layer's image — so no dead work reaches XLA."""
  x, w = res
  (plo, phi), (qlo, qhi) = pads
  dx = dw = None
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return dx, dw
  if w is not None:       # x is differentiated: its shape follows from g, the kernel and the padding
    kh, kw, cin, _ = w.shape
    x_aval = jax.ShapeDtypeStruct((g.shape[0], g.shape[1] + kh - 1 - plo - phi,
                                   g.shape[2] + kw - 1 - qlo - qhi, cin), g.dtype)
    dx, = jax.linear_transpose(lambda x_: _lax_conv(x_, w, pads), x_aval)(g)
  if x is not None:       # w is differentiated
    w_aval = jax.ShapeDtypeStruct((x.shape[1] + plo + phi - g.shape[1] + 1,
                                   x.shape[2] + qlo + qhi - g.shape[2] + 1, x.shape[3], g.shape[3]), g.dtype)
    dw, = jax.linear_transpose(lambda w_: _lax_conv(x, w_, pads), w_aval)(g)
  return dx, dw


_tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd, symbolic_zeros=True)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         precision: Any = None, **kwargs: Any) -> jax.Array:
  """`lax.conv_general_dilated`, with stride-1 2-D NHWC convolutions of ≤ MAX_TAPS taps done as taps."""
  fast = (lhs.ndim == 4 and rhs.ndim == 4 and tuple(window_strides) == (1, 1)
          and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
          and feature_group_count == 1 and not kwargs and precision is None
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
          and rhs.shape[0] * rhs.shape[1] * rhs.shape[2] <= MAX_TAPS
          and lhs.dtype == rhs.dtype)
  pads = _as_pads(padding, lhs.shape, rhs.shape) if fast else ()
  if not fast or min(min(p) for p in pads) < 0:      # negative padding (cropping): lax's business
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision, **kwargs)
  return _tap_conv(lhs, rhs, pads)
