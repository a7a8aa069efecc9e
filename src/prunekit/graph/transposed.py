"""Transposed convolutions (``F.conv_transpose1d/2d/3d``): how they move channel ids.

A transposed convolution stores its weight as ``(in_channels, out_channels / groups,
*kernel)``: dimension 0 indexes the input channels, dimension 1 the output channels of one
conv group. With ``groups=1`` the output channels are ordinary units (weight dimension 1
and the bias), and the input channels are the weight's rows. With ``groups > 1`` (depthwise
included) a whole conv group, its input channels and its output channels, is one unit, and
``pk.compact`` lowers ``groups``.

A removed input channel that holds a non-zero constant in the masked model (after a
sigmoid, say) cannot be folded into the bias: a transposed convolution spreads a constant
input into a position-dependent output (borders and strides receive fewer kernel taps), so
such channels are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import channels as T
from .args import arg as _arg

#: ``torch.nn.functional`` names of the transposed convolutions.
CONV_TRANSPOSE = frozenset({"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})

#: ``graph.extra`` key kind: ``("transposed", module) -> (groups, inputs per group, outputs per group)``.
KIND = "transposed"


def conv_transpose(tr: T.ChannelTracer, name: str, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
    """Handler for ``conv_transpose{1,2,3}d(input, weight, bias, stride, padding,
    output_padding, groups, dilation)``."""
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    if not isinstance(out, torch.Tensor):
        tr.fix_all(name, (x,), "transposed convolution with an unexpected output; kept")
        return
    if id(w) not in tr.params or (b is not None and id(b) not in tr.params):
        tr.fix_all(name, (x,), "transposed convolution with a weight that is not a module parameter; kept")
        return
    cdim = 1 if x.dim() == w.dim() else 0  # unbatched inputs have no batch dimension
    cin, go = w.shape[0], w.shape[1]
    cout = go * groups
    in_ids = tr.channel_ids(x, cdim, name)
    fill = tr.fill(x)
    wname = tr.params[id(w)][0]
    module = tr.g.param_modules[wname]
    if fill != 0.0:
        tr.fix(in_ids[None])
        tr.note(name, f"input channels hold {fill:g} when removed, which a transposed convolution spreads "
                      "unevenly over its output; kept")
    ids = tr.g.uf.new(cout)
    if groups == 1:
        tr.member(w, 0, in_ids, "in", fill)
        tr.member(w, 1, ids, "out")
    else:  # whole conv groups: a group's input rows are its whole filter
        tr.g.uf.union_groups(in_ids, ids, groups)
        tr.member(w, 0, in_ids, "out")
    tr.member(b, 0, ids, "chan")
    tr.g.produced.append(wname)
    tr.g.extra[(KIND, module)] = (groups, cin // groups, go)
    shape = [1] * out.dim()
    shape[cdim] = cout
    tr.set(out, ids.view(shape), 0.0)


def unit_dim(extra: dict[Any, Any], module: str, dim: int, role: str) -> bool:
    """True when dimension ``dim`` of a ``role`` member of ``module`` indexes output units,
    so that a channel-level score (one number per output channel) lines up with it."""
    facts = extra.get((KIND, module))
    if facts is None:
        return dim == 0
    if role == "chan":  # the bias
        return dim == 0
    return facts[0] == 1 and dim == 1
