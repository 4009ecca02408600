"""Layer masking for CNNs (Balasubramanian & Feizi, "Towards Improved Input Masking for CNNs").

Mask convention for this module: ``mask`` is a bool tensor (N, 1, H, W), **True = keep** (visible);
False pixels are removed and must have no influence on the output.

Filling removed pixels with black or grey shows the network an image it never saw in training (and the
shape of the hole itself carries information). Layer masking instead carries the mask beside every
activation, so removed pixels are absent at every layer:

- before each k x k convolution (k > 1) the masked positions next to visible ones are filled from their
  visible neighbours: k-1 rounds of "mean of the visible 3x3 neighbours", each round writing only masked
  positions and growing the visible region by one ring, so the conv sees no artificial edge;
- the conv output is multiplied by the propagated mask: a max-pool of the mask with the conv's kernel,
  stride, padding and dilation (an output is visible if its window holds a visible input);
- BatchNorm and ReLU outputs are re-multiplied by the mask; max / average pools propagate the mask the
  same way (a max pool sees only visible values, an average pool averages visible values only);
- a residual add keeps the intersection (product) of its two masks;
- the global average pool averages over visible positions only; after pooling to 1x1 the mask is
  dropped, and an image with no visible pixel gives the head's output on a zero feature (no NaN).

**Average pools (a choice that differs from the official code).** ``nn.AvgPool2d`` here averages over
the *visible* inputs of each window (the zero-masked pool rescaled by window size / visible count), the
same rule as the global average pool. The official code's ``MyAvgPool2d`` instead averages the
zero-masked input over the whole window (masked inputs count as zeros, so values shrink near the mask
edge) and keeps the output where the window holds a visible input. The paper's networks (torchvision
ResNet-50 and the other ResNets) have no ``nn.AvgPool2d`` — only the final adaptive pool, where both
average over visible positions — and neither do :class:`~companion.models.cnn.SmallCNN` and
:class:`~companion.models.cnn.ResNet`, so this choice changes no number in the layer-masking notebook.

**Fill rounds.** The official code runs ``k`` fill rounds before a ``k x k`` conv; ``k - 1`` rounds
already reach every input position of every visible output, so the extra round changes no visible
output (and its ``1e-5`` in the fill's denominator is left out here).

How it runs: ``torch.fx`` traces the model once, a graph pass writes a new ``GraphModule`` whose
``forward(x, mask)`` computes these mask operations around the model's own modules (shared, weights
included), and the result is cached per model. ``layer_masked(model).code`` prints the generated code.

The default variant is optimised and gives the same output as the literal one (``reference=True``,
which follows the list above step by step and is what :func:`feature_maps` shows):

1. *lazy re-masking*: an activation may hold arbitrary (finite) values at masked positions ("dirty")
   as long as nothing reads them; it is multiplied by its mask only before an op that does read them
   (a fill, a pool, the output). BN, ReLU and adds in between are per-position, so this changes nothing
   at visible positions and saves most multiplies;
2. *demand-driven fill*: a backward pass over the graph finds which positions of each conv output are
   ever used downstream. In a ResNet block the add keeps only the block input's mask, so the second
   conv's output is needed only where its input is fully visible and its fill is skipped;
3. *sparse fill* (on the CPU): only the ring pixels are written (index lists built once per mask, an
   ``embedding_bag`` gather for channels-last tensors), in place, instead of dense 3x3 pools over
   every channel. On a GPU the dense fill is faster (no host synchronisation) and is used instead;
4. masks are symbolic ("input dilated by 2", "that pooled with 3x3/2", ...), so each distinct mask is
   computed once per forward, whichever layers use it.

``compile=True`` wraps the transformed module in ``torch.compile`` (the sparse fill, whose sizes depend on
the mask, runs eagerly between the compiled pieces); the first call then takes tens of seconds, so keep
it for long runs.

The model must be in eval mode (the caller's job): BatchNorm must use its running statistics, since batch
statistics would mix masked content into every position. Dropout is treated as the identity.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "SUPPORTED_OPS",
    "LayerMasked",
    "Normalized",
    "layer_masked",
    "layer_masked_forward",
    "feature_maps",
    "supports_layer_masking",
]

SUPPORTED_OPS = (
    "nn.Conv2d (padding_mode='zeros', any kernel/stride/padding/dilation/groups)",
    "nn.BatchNorm2d (with running statistics; eval mode)",
    "ReLU: nn.ReLU, F.relu, torch.relu, Tensor.relu",
    "nn.MaxPool2d, nn.AvgPool2d",
    "nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d, Tensor.mean / torch.mean over dims (2, 3)",
    "residual add: +, +=, operator.add, torch.add, Tensor.add",
    "nn.Flatten, torch.flatten, Tensor.flatten / view / reshape (masked positions enter as zeros)",
    "nn.Linear (after pooling or flattening)",
    "nn.Identity, nn.Dropout (as identity)",
    "nn.Sequential and any nn.Module whose forward uses only these",
    "Tensor.size / .shape / .dim (shape arithmetic)",
)


# ----------------------------------------------------------------------------------------------------
# Runtime helpers: these run inside the generated forward. m is a float 0/1 mask (N, 1, h, w).


def _float_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.to(x.dtype)


def _zero_masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x with masked positions set to 0 (a ``where``, so NaN/inf under the mask cannot leak)."""
    return torch.where(m > 0, x, 0.0)


def _hide_masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x with masked positions set to -inf, so that a max pool sees visible values only."""
    return torch.where(m > 0, x, float("-inf"))


def _window_max(m, kernel, stride, pads, dilation):
    """Max of a mask over every conv / pool window, i.e. ``max_pool2d`` with zero padding, computed as
    a separable max of strided slices (several times faster than ``max_pool2d`` on one channel)."""
    top, bottom, left, right = pads
    m = F.pad(m, (left, right, top, bottom))
    for dim, k, s, d in ((2, kernel[0], stride[0], dilation[0]), (3, kernel[1], stride[1], dilation[1])):
        n_out = (m.shape[dim] - d * (k - 1) - 1) // s + 1
        taps = [m.narrow(dim, a * d, (n_out - 1) * s + 1) for a in range(k)]
        if s > 1:
            taps = [t.unfold(dim, 1, s).squeeze(-1) for t in taps]  # every s-th row / column
        m = taps[0]
        for t in taps[1:]:
            m = torch.maximum(m, t)
    return m


def _dilate_mask(m: torch.Tensor) -> torch.Tensor:
    """Grow the visible region by one pixel (3x3 max): the mask after one fill round."""
    return _window_max(m, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))


def _pool_mask(m, kernel, stride, pads, dilation, ceil_mode):
    """Mask of a conv / pool output: visible where its window holds a visible input.

    ``pads`` = (top, bottom, left, right); zero padding = "outside the image is not visible".
    """
    if not ceil_mode:
        return _window_max(m, kernel, stride, pads, dilation)
    top, bottom, left, right = pads  # pools only, where padding is symmetric and at most half the kernel
    return F.max_pool2d(m, kernel, stride, (top, left), dilation, ceil_mode=True)


def _fill_coef(m: torch.Tensor) -> torch.Tensor:
    """Per-pixel weight of one dense fill round: 1 / (visible 3x3 neighbours) on the next ring, else 0.

    With ``box = avg_pool2d(x, 3, 1, 1)`` (x zero where masked), ``x + coef * box`` writes the mean of
    the visible neighbours on the ring and leaves every other pixel unchanged.
    """
    visible_share = F.avg_pool2d(m, 3, 1, 1)
    return torch.where(visible_share > 0, (1 - m) / visible_share, 0.0)


def _fill_dense(x: torch.Tensor, *coefs: torch.Tensor) -> torch.Tensor:
    """One fill round per coefficient map (see :func:`_fill_coef`); x must be zero where masked."""
    for coef in coefs:
        x = torch.addcmul(x, coef, F.avg_pool2d(x, 3, 1, 1))
    return x


class _Ring(NamedTuple):
    """Index lists of one sparse fill round: R ring pixels, S (ring pixel, visible neighbour) pairs.
    Pixels are numbered n*H*W + i*W + j."""

    dst: torch.Tensor  # (R,) the ring pixels
    src: torch.Tensor  # (S,) their visible 3x3 neighbours, grouped by ring pixel
    offsets: torch.Tensor  # (R,) start of each ring pixel's group in src
    group: torch.Tensor  # (S,) ring-pixel number (0..R-1) of each src entry
    inv_count: torch.Tensor  # (R,) 1 / (visible neighbours of the ring pixel)


_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@torch.compiler.disable  # data-dependent sizes: runs eagerly between compiled pieces
def _ring_plan(m: torch.Tensor, m_next: torch.Tensor) -> _Ring:
    """Where one fill round writes: pixels masked in ``m`` but visible in ``m_next`` (= m dilated by one),
    and which visible 3x3 neighbours each of them averages."""
    _, _, h, w = m.shape
    dst = ((m_next > 0) & (m == 0)).flatten().nonzero().squeeze(1)  # (R,)
    n, rest = dst.div(h * w, rounding_mode="floor"), dst.remainder(h * w)
    i, j = rest.div(w, rounding_mode="floor"), rest.remainder(w)
    # look neighbours up in a zero-padded copy of the mask, so the image border needs no special case
    visible_padded = F.pad(m[:, 0], (1, 1, 1, 1)).flatten() > 0
    at_padded = (n * (h + 2) + i + 1) * (w + 2) + j + 1
    step_padded = torch.tensor([di * (w + 2) + dj for di, dj in _NEIGHBOURS], device=m.device)
    step = torch.tensor([di * w + dj for di, dj in _NEIGHBOURS], device=m.device)
    use = visible_padded[at_padded[:, None] + step_padded]  # (R, 8); at least one per ring pixel
    count = use.sum(1)
    return _Ring(
        dst=dst,
        src=(dst[:, None] + step)[use],
        offsets=count.cumsum(0) - count,
        group=torch.arange(len(dst), device=m.device).repeat_interleave(count),
        inv_count=1.0 / count.to(m.dtype),
    )


def _nij(flat: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, rest = flat.div(h * w, rounding_mode="floor"), flat.remainder(h * w)
    return n, rest.div(w, rounding_mode="floor"), rest.remainder(w)


@torch.compiler.disable
def _fill_rings_(x: torch.Tensor, *rings: _Ring) -> torch.Tensor:
    """Sparse fill, in place: each ring pixel (all channels) := mean of its visible 3x3 neighbours.

    Reads only visible positions, so x may hold anything (finite) where masked. Returns x itself, or a
    filled copy when autograd needs the original.
    """
    if x.requires_grad and torch.is_grad_enabled():
        x = x.clone()
    _, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1)  # a (N*H*W, C) matrix view when x is channels-last
    rows = rows.view(-1, c) if rows.is_contiguous() and x.dtype in (torch.float32, torch.float64) else None
    for ring in rings:
        if ring.dst.numel() == 0:
            continue
        if rows is not None:  # channels-last: one contiguous row of C values per pixel
            rows.index_copy_(0, ring.dst, F.embedding_bag(ring.src, rows, ring.offsets, mode="mean"))
        else:
            sn, si, sj = _nij(ring.src, h, w)
            sums = x.new_zeros(ring.dst.numel(), c).index_add_(0, ring.group, x[sn, :, si, sj])  # (R, C)
            dn, di, dj = _nij(ring.dst, h, w)
            x[dn, :, di, dj] = sums * ring.inv_count.to(x.dtype)[:, None]
    return x


def _avg_pool_ratio(m, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Rescales an average pool of zero-masked input into an average over visible inputs only.

    Exactly 1 where the window is fully visible (so an all-visible mask changes nothing), 0 where it
    holds no visible input.
    """
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    plain, visible = F.avg_pool2d(torch.ones_like(m), *args), F.avg_pool2d(m, *args)
    return torch.where(visible > 0, plain / visible, 0.0)


def _visible_fraction(m: torch.Tensor, output_size) -> torch.Tensor:
    """Fraction of visible pixels per adaptive-pool bin, clamped away from 0 (the divisor of the
    masked global average pool: an all-masked bin gives 0 / tiny = 0)."""
    return F.adaptive_avg_pool2d(m, output_size).clamp_min(torch.finfo(m.dtype).tiny)


def _visible_mean_fraction(m: torch.Tensor, dim, keepdim: bool) -> torch.Tensor:
    """As :func:`_visible_fraction`, for ``Tensor.mean(dim, keepdim)`` over the spatial dims."""
    frac = m.mean(dim, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)  # (N, 1, 1, 1)
    return frac if keepdim else frac.flatten(1)  # (N, 1) broadcasts against (N, C)


# ----------------------------------------------------------------------------------------------------
# Symbolic masks. A mask is a Region = (base, radius): ``base`` dilated by ``radius`` pixels (Chebyshev).
# A stride-1 "same" k x k conv dilates by (k-1)/2, which keeps the base, so masks of a ResNet stage
# compare as "same base, radius r1 vs r2". Bases:
#   ("input",)                      the mask given to forward
#   ("pool", parent, window)        max-pool of the parent region's mask (strided convs, pools)
#   ("and", frozenset({a, b}))      intersection of two regions (residual add)
#   ("apool", parent, output_size)  adaptive max-pool (adaptive average pool to more than 1x1)

INPUT = (("input",), 0)


@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def args(self) -> tuple:
        return (self.kernel, self.stride, self.pads, self.dilation, self.ceil_mode)

    def fill_rounds(self) -> int:
        """Rings to fill before a conv with this window: its span minus one."""
        return max(d * (k - 1) for k, d in zip(self.kernel, self.dilation))

    def dilation_radius(self) -> int | None:
        """r if this window maps a mask to the same mask dilated by r (stride-1 'same' odd square)."""
        (kh, kw), r = self.kernel, (self.kernel[0] - 1) // 2
        square = kh == kw and kh % 2 == 1 and self.dilation == (1, 1)
        same = self.stride == (1, 1) and self.pads == (r, r, r, r)
        return r if square and same else None

    def covers(self, other: _Window) -> bool:
        """Whether every window of ``other`` lies inside the matching window of self."""
        if (self.stride, self.dilation, self.ceil_mode) != (other.stride, other.dilation, other.ceil_mode):
            return False
        if self.dilation != (1, 1):
            return self == other
        return all(
            p >= q and k - p >= kq - q
            for k, p, kq, q in zip(self.kernel, self.pads[::2], other.kernel, other.pads[::2])
        )


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _dilated(region, r: int):
    return (region[0], region[1] + r)


def _contains(a, b) -> bool:
    """Whether region a provably contains region b (False when unsure)."""
    if a == b:
        return True
    (base_a, ra), (base_b, rb) = a, b
    if base_a == base_b:
        return ra >= rb
    if base_b[0] == "and" and any(_contains(a, _dilated(part, rb)) for part in base_b[1]):
        return True
    if base_a[0] == "and" and ra == 0:
        return all(_contains(part, b) for part in base_a[1])
    if base_a[0] == base_b[0] == "pool" and base_a[1] == base_b[1] and ra >= rb:
        return base_a[2].covers(base_b[2])
    return False


def _intersection(a, b):
    if _contains(a, b):
        return b
    if _contains(b, a):
        return a
    return (("and", frozenset((a, b))), 0)


def _window_region(region, window: _Window):
    """Region of a conv / pool output."""
    r = window.dilation_radius()
    return _dilated(region, r) if r is not None else (("pool", region, window), 0)


# ----------------------------------------------------------------------------------------------------
# Op classification

_MODULE_KINDS = (
    (nn.Conv2d, "conv"),
    (nn.BatchNorm2d, "bn"),
    (nn.ReLU, "relu"),
    (nn.MaxPool2d, "maxpool"),
    (nn.AvgPool2d, "avgpool"),
    (nn.AdaptiveAvgPool2d, "adaptive_avgpool"),
    (nn.Flatten, "flatten"),
    (nn.Linear, "linear"),
    (nn.Identity, "identity"),
    (nn.Dropout, "identity"),
)
_FUNCTION_KINDS = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    F.relu: "relu",
    torch.relu: "relu",
    torch.flatten: "flatten",
    F.adaptive_avg_pool2d: "adaptive_avgpool",
    torch.mean: "mean",
    getattr: "meta",
    operator.getitem: "meta",
}
_METHOD_KINDS = {
    "add": "add",
    "add_": "add",
    "relu": "relu",
    "relu_": "relu",
    "flatten": "flatten",
    "view": "reshape",
    "reshape": "reshape",
    "mean": "mean",
    "size": "meta",
    "dim": "meta",
}
_RECORDED_KINDS = ("conv", "relu", "add")  # the activations feature_maps returns


def _describe(node: fx.Node, modules: dict) -> str:
    if node.op == "call_module":
        return f"module {type(modules[node.target]).__name__} (at '{node.target}')"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", repr(node.target))
        where = getattr(node.target, "__module__", None) or ""
        where = "torch" if where.startswith("torch._C") else where
        return f"function {where + '.' if where else ''}{name}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    return f"{node.op} '{node.target}'"


def _unsupported(node: fx.Node, modules: dict, why: str = "") -> NotImplementedError:
    why = f": {why}" if why else ""
    return NotImplementedError(
        f"layer masking does not support {_describe(node, modules)} (fx node '{node.name}'){why}. "
        f"Supported: {'; '.join(SUPPORTED_OPS)}."
    )


def _op_kind(node: fx.Node, modules: dict) -> str:
    if node.op in ("placeholder", "output"):
        return node.op
    kind = None
    if node.op == "call_module":
        mod = modules[node.target]
        for cls, k in _MODULE_KINDS:
            if isinstance(mod, cls) and type(mod).forward is cls.forward:
                kind = k
    elif node.op == "call_function":
        kind = _FUNCTION_KINDS.get(node.target)
    elif node.op == "call_method":
        kind = _METHOD_KINDS.get(node.target)
    if kind is None:
        raise _unsupported(node, modules)
    return kind


def _conv_window(conv: nn.Conv2d) -> _Window:
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    if conv.padding == "valid":
        pads = (0, 0, 0, 0)
    elif conv.padding == "same":
        total = [di * (ki - 1) for ki, di in zip(k, d)]
        pads = (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    else:
        pads = (conv.padding[0], conv.padding[0], conv.padding[1], conv.padding[1])
    return _Window(tuple(k), tuple(s), pads, tuple(d))


def _pool_window(pool: nn.Module) -> _Window:
    k = _pair(pool.kernel_size)
    s = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    p = _pair(pool.padding)
    d = _pair(getattr(pool, "dilation", 1))
    return _Window(k, s, (p[0], p[0], p[1], p[1]), d, bool(pool.ceil_mode))


def _spatial_mean_dims(node: fx.Node):
    """(dims, keepdim) of a mean node if it averages over the two spatial dims of an NCHW map."""
    args = list(node.args[1:]) + [None, None]
    dim = node.kwargs.get("dim", args[0])
    keepdim = bool(node.kwargs.get("keepdim", args[1] or False))
    dims = dim if isinstance(dim, (tuple, list)) else ()
    ok = len(dims) == 2 and all(isinstance(d, int) for d in dims) and {d % 4 for d in dims} == {2, 3}
    return (tuple(dims), keepdim) if ok and "dtype" not in node.kwargs else (None, keepdim)


# ----------------------------------------------------------------------------------------------------
# The graph pass


@dataclass
class _Info:
    """What the analysis knows about one node of the traced graph."""

    kind: str
    region: tuple | None = None  # symbolic mask of the output; None: no mask (pooled, or not a tensor)
    window: _Window | None = None  # conv / pool window
    tensor: bool = True


@dataclass
class _State:
    """Facts about one runtime tensor of the generated graph (shared by its aliases)."""

    clean: bool  # zero wherever its mask is zero
    nonneg: bool = False
    filled: int = 0  # fill rounds already written into it in place
    cleaned: fx.Node | None = None  # cached ``x * mask``


@dataclass
class _Val:
    """A node of the generated graph standing for one node of the traced graph."""

    node: fx.Node
    region: tuple | None = None
    state: _State | None = None


class _Transform:
    """Writes the layer-masked (or, with ``masked=False``, the plain recording) version of a traced model.

    optimize: lazy re-masking + demand-driven fill rounds; otherwise every conv/BN output is re-masked
    and every k x k conv gets k-1 fill rounds. fill: "sparse" (in place, ring pixels only) or "dense".
    record: also return {name: activation} after every conv / ReLU / add, and {name: mask}.
    """

    def __init__(self, traced: fx.GraphModule, masked=True, optimize=True, fill="sparse", record=False):
        self.traced, self.masked, self.optimize, self.fill, self.record = traced, masked, optimize, fill, record
        self.modules = dict(traced.named_modules())
        self.nodes = list(traced.graph.nodes)
        self.info: dict[fx.Node, _Info] = {}
        self.rounds: dict[fx.Node, int] = {}
        self._analyse()
        if masked and optimize:
            self._plan_fill_rounds()

    # -- pass 1: op kinds and symbolic masks, forward --------------------------------------------------
    def _analyse(self) -> None:
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            names = [n.name for n in placeholders]
            raise NotImplementedError(f"layer masking needs a model with one input tensor, got {names}")
        for node in self.nodes:
            self.info[node] = self._analyse_node(node)

    def _analyse_node(self, node: fx.Node) -> _Info:
        ins = [self.info[a] for a in node.all_input_nodes]
        shape_math = node.op == "call_function" and getattr(node.target, "__module__", None) == "_operator"
        if shape_math and ins and not any(i.tensor for i in ins):  # e.g. x.size(0) * 2
            return _Info("meta", tensor=False)
        kind = _op_kind(node, self.modules)
        if kind == "placeholder":
            return _Info(kind, INPUT if self.masked else None)
        if kind == "output":
            return _Info(kind, tensor=False)
        if kind == "meta":
            if node.target is operator.getitem and ins[0].tensor:
                raise _unsupported(node, self.modules, "indexing or slicing a tensor")
            if node.target is getattr and node.args[1] not in ("shape", "ndim", "dtype", "device"):
                raise _unsupported(node, self.modules, f"tensor attribute {node.args[1]!r}")
            return _Info(kind, tensor=False)
        if any(not i.tensor for i in ins[:1]):
            raise _unsupported(node, self.modules, "expected a tensor input")
        mod = self.modules.get(node.target) if node.op == "call_module" else None
        region = ins[0].region if ins else None
        if kind == "conv":
            if mod.padding_mode != "zeros":
                raise _unsupported(node, self.modules, f"padding_mode={mod.padding_mode!r}")
            window = _conv_window(mod)
            return _Info(kind, region and _window_region(region, window), window)
        if kind == "bn" and (mod.running_mean is None or mod.running_var is None):
            raise _unsupported(node, self.modules, "BatchNorm2d without running statistics")
        if kind in ("bn", "relu", "identity"):
            return _Info(kind, region)
        if kind in ("maxpool", "avgpool"):
            if getattr(mod, "return_indices", False):
                raise _unsupported(node, self.modules, "return_indices=True")
            window = _pool_window(mod)
            return _Info(kind, region and _window_region(region, window), window)
        if kind == "adaptive_avgpool":
            size = mod.output_size if mod is not None else node.kwargs.get("output_size", node.args[-1])
            if region is None or _pair(size) == (1, 1):
                return _Info(kind, None)
            return _Info(kind, (("apool", region, _pair(size)), 0))
        if kind == "mean":
            if region is not None and _spatial_mean_dims(node)[0] is None:
                raise _unsupported(node, self.modules, "only a mean over the spatial dims (2, 3) is supported")
            return _Info(kind, None)
        if kind in ("flatten", "reshape"):
            return _Info(kind, None)
        if kind == "linear":
            if region is not None:
                raise _unsupported(node, self.modules, "Linear on a masked feature map (pool or flatten first)")
            return _Info(kind, None)
        if kind == "add":
            regions = [i.region for i in ins if i.region is not None]
            out = regions[0] if regions else None
            for r in regions[1:]:
                out = _intersection(out, r)
            return _Info(kind, out)
        raise AssertionError(kind)

    # -- pass 2: which positions of each activation are used, backward ---------------------------------
    def _plan_fill_rounds(self) -> None:
        demand: dict[fx.Node, tuple] = {}

        def need(node: fx.Node, region) -> None:
            full = self.info[node].region
            if region is None or full is None:
                return
            old = demand.get(node)
            if old is None or _contains(region, old):
                demand[node] = region
            elif not _contains(old, region):
                demand[node] = full  # can't represent the union: ask for everything

        for node in reversed(self.nodes):
            info, want = self.info[node], demand.get(node)
            ins = [a for a in node.all_input_nodes if self.info[a].region is not None]
            if info.kind == "meta":
                continue
            if info.kind == "conv" and ins:
                region_in = self.info[ins[0]].region
                rounds, extent = self._conv_rounds(info, region_in, want)
                self.rounds[node] = rounds
                need(ins[0], extent if rounds == 0 and extent is not None else region_in)
            elif info.kind in ("bn", "relu", "identity", "add"):
                for a in ins:  # per-position ops: the inputs are needed where the output is
                    need(a, want)
            else:
                for a in ins:
                    need(a, self.info[a].region)

    def _conv_rounds(self, info: _Info, region_in, want):
        """(fill rounds, input positions read) for a conv whose output is used on region ``want``."""
        full, r = info.window.fill_rounds(), info.window.dilation_radius()
        if want is None:  # output never used
            return 0, None
        if r is None:
            return full, None
        extent = _dilated(want, r)  # inputs read by the used outputs
        for rounds in range(full + 1):
            if _contains(_dilated(region_in, rounds), extent):
                return rounds, extent
        return full, None

    # -- pass 3: write the new graph -------------------------------------------------------------------
    def build(self) -> fx.GraphModule:
        self.graph = fx.Graph()
        self.env: dict[fx.Node, _Val] = {}
        self.memo: dict[tuple, fx.Node] = {}
        self.feats: dict[str, fx.Node] = {}
        self.feat_masks: dict[str, fx.Node] = {}
        for node in self.nodes:
            val = getattr(self, f"_emit_{self.info[node].kind}")(node)
            if val is not None:
                self.env[node] = val
                if self.record and self.info[node].kind in _RECORDED_KINDS:
                    self.feats[node.name] = self._clean(val)
                    if val.region is not None:
                        self.feat_masks[node.name] = self.mask(val.region)
        gm = fx.GraphModule(self.traced, self.graph, class_name="LayerMaskedGraph")
        gm.graph.lint()
        return gm

    def _call(self, fn: Callable, *args, **kwargs) -> fx.Node:
        return self.graph.call_function(fn, args, kwargs)

    def _memo(self, key: tuple, make: Callable[[], fx.Node]) -> fx.Node:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def mask(self, region) -> fx.Node:
        """The float 0/1 mask (N, 1, h, w) of a region, computed once per forward."""
        base, radius = region
        if radius > 0:
            return self._memo(("mask", region), lambda: self._call(_dilate_mask, self.mask(_dilated(region, -1))))
        if base[0] == "input":
            return self.input_mask
        if base[0] == "pool":
            parent, window = base[1], base[2]
            return self._memo(("mask", region), lambda: self._call(_pool_mask, self.mask(parent), *window.args()))
        if base[0] == "and":
            a, b = sorted(base[1], key=repr)
            return self._memo(("mask", region), lambda: self._call(torch.mul, self.mask(a), self.mask(b)))
        parent, size = base[1], base[2]  # "apool"
        return self._memo(("mask", region), lambda: self._call(F.adaptive_max_pool2d, self.mask(parent), size))

    def _clean(self, val: _Val) -> fx.Node:
        """val's tensor with zeros wherever its mask is zero (a multiply, once, if it is dirty)."""
        if val.region is None or val.state.clean:
            return val.node
        if val.state.cleaned is None:
            val.state.cleaned = self._call(torch.mul, val.node, self.mask(val.region))
        return val.state.cleaned

    def _arg(self, a):
        return fx.node.map_arg(a, lambda n: self.env[n].node)

    def _copy(self, node: fx.Node, first=None) -> fx.Node:
        """The node itself, on the new graph's values (first argument replaced by ``first`` if given)."""
        args = self._arg(node.args)
        if first is not None:
            args = (first, *args[1:])
        kwargs = self._arg(node.kwargs)
        return self.graph.create_node(node.op, node.target, args, kwargs)

    def _masked_val(self, node: fx.Node, y: fx.Node, state: _State) -> _Val:
        """Value of a masked op output; the reference variant re-masks it at once."""
        region = self.info[node].region
        if not self.optimize and not state.clean:
            y, state = self._call(torch.mul, y, self.mask(region)), _State(True, state.nonneg)
        return _Val(y, region, state)

    def _input(self, node: fx.Node) -> _Val:
        return self.env[node.all_input_nodes[0]]

    # one _emit_<kind> per op kind
    def _emit_placeholder(self, node):
        x = self.graph.placeholder("x")
        if not self.masked:
            return _Val(x)
        mask = self.graph.placeholder("mask")
        self.input_mask = self._call(_float_mask, mask, x)
        return _Val(self._call(_zero_masked, x, self.input_mask), INPUT, _State(clean=True))

    def _emit_output(self, node):
        def out(n):
            return self._clean(self.env[n])

        result = fx.node.map_arg(node.args[0], out)
        self.graph.output((result, self.feats, self.feat_masks) if self.record else result)

    def _emit_meta(self, node):
        return _Val(self._copy(node))

    def _emit_identity(self, node):
        return self._input(node)  # the same value (and state): nn.Dropout is the identity in eval mode

    def _emit_conv(self, node):
        v = self._input(node)
        if v.region is None:
            return _Val(self._copy(node))
        rounds = self.rounds.get(node, 0) if self.optimize else self.info[node].window.fill_rounds()
        y = self.graph.call_module(node.target, (self._fill(v, rounds),))
        return self._masked_val(node, y, _State(clean=False))

    def _fill(self, v: _Val, rounds: int) -> fx.Node:
        if rounds == 0:
            return v.node
        if self.fill == "dense":
            coefs = [self._memo(("coef", _dilated(v.region, j)), lambda j=j: self._call(
                _fill_coef, self.mask(_dilated(v.region, j)))) for j in range(rounds)]
            return self._call(_fill_dense, self._clean(v), *coefs)
        if v.state.filled >= rounds:  # an earlier conv already filled this tensor far enough
            return v.node
        rings = [self._memo(("ring", _dilated(v.region, j)), lambda j=j: self._call(
            _ring_plan, self.mask(_dilated(v.region, j)), self.mask(_dilated(v.region, j + 1))))
            for j in range(v.state.filled, rounds)]
        v.node = self._call(_fill_rings_, v.node, *rings)  # later users of v see the filled tensor
        v.state.filled, v.state.clean = rounds, False
        return v.node

    def _emit_bn(self, node):
        v = self._input(node)
        if v.region is None:
            return _Val(self._copy(node))
        return self._masked_val(node, self.graph.call_module(node.target, (v.node,)), _State(clean=False))

    def _emit_relu(self, node):
        v, src = self._input(node), node.all_input_nodes[0]
        # in place only on a fresh tensor that nothing else reads (recorded activations must not change)
        fresh = self.info[src].kind in ("conv", "bn", "add") and len(src.users) == 1
        owned = fresh and self.optimize and not self.record
        y = self._call(torch.relu_ if owned else torch.relu, v.node)
        if v.region is None:
            return _Val(y)
        return _Val(y, v.region, _State(clean=v.state.clean, nonneg=True))  # relu(0) = 0

    def _emit_add(self, node):
        target = operator.add if node.target in (operator.add, operator.iadd) else torch.add
        y = self._call(target, *self._arg(node.args), **self._arg(node.kwargs))
        region = self.info[node].region
        if region is None:
            return _Val(y)
        ins = [self.env[a] for a in node.all_input_nodes]
        masked = [v for v in ins if v.region is not None]
        only_masked = len(masked) == len(node.args) and not node.kwargs
        clean = only_masked and all(v.state.clean and v.region == region for v in masked)
        nonneg = only_masked and all(v.state.nonneg for v in masked)
        return self._masked_val(node, y, _State(clean, nonneg))

    def _emit_maxpool(self, node):
        v = self._input(node)
        if v.region is None:
            return _Val(self._copy(node))
        region = self.info[node].region
        if v.state.nonneg:  # masked zeros never win against visible values >= 0
            y = self.graph.call_module(node.target, (self._clean(v),))
        else:
            y = self.graph.call_module(node.target, (self._call(_hide_masked, v.node, self.mask(v.region)),))
            y = self._call(_zero_masked, y, self.mask(region))
        return _Val(y, region, _State(clean=True, nonneg=v.state.nonneg))

    def _emit_avgpool(self, node):
        v = self._input(node)
        if v.region is None:
            return _Val(self._copy(node))
        pool = self.modules[node.target]
        args = (_pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding),
                pool.ceil_mode, pool.count_include_pad, pool.divisor_override)
        ratio = self._memo(("avg", v.region, args), lambda: self._call(_avg_pool_ratio, self.mask(v.region), *args))
        y = self._call(torch.mul, self.graph.call_module(node.target, (self._clean(v),)), ratio)
        return _Val(y, self.info[node].region, _State(clean=True, nonneg=v.state.nonneg))

    def _emit_adaptive_avgpool(self, node):
        v = self._input(node)
        if v.region is None:
            return _Val(self._copy(node))
        y = self._copy(node, first=self._clean(v))  # mean of zero-masked x; rescale to visible mean
        size = _pair(self.modules[node.target].output_size if node.op == "call_module" else
                     node.kwargs.get("output_size", node.args[-1]))
        frac = self._memo(("frac", v.region, size), lambda: self._call(_visible_fraction, self.mask(v.region), size))
        y = self._call(torch.div, y, frac)
        region = self.info[node].region
        return _Val(y, region, region and _State(clean=True, nonneg=v.state.nonneg))

    def _emit_mean(self, node):
        v = self._input(node)
        if v.region is None:
            return _Val(self._copy(node))
        dims, keepdim = _spatial_mean_dims(node)
        frac = self._call(_visible_mean_fraction, self.mask(v.region), dims, keepdim)
        return _Val(self._call(torch.div, self._copy(node, first=self._clean(v)), frac))

    def _emit_flatten(self, node):
        return _Val(self._copy(node, first=self._clean(self._input(node))))

    _emit_reshape = _emit_flatten

    def _emit_linear(self, node):
        return _Val(self._copy(node))


# ----------------------------------------------------------------------------------------------------
# Public API

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {variant: module}


def _cached(model: nn.Module, key: tuple, build: Callable):
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def _traced(model: nn.Module) -> fx.GraphModule:
    def trace():
        try:
            return fx.symbolic_trace(model)
        except Exception as err:  # data-dependent control flow, unsupported Python, ...
            raise NotImplementedError(
                f"layer masking could not trace {type(model).__name__} with torch.fx: {err}"
            ) from err

    return _cached(model, ("traced",), trace)


def _check_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mask as bool (N, 1, H, W) on x's device; accepts (N, H, W), a batch of 1, or 0/1 floats."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask must be (N, 1, H, W) for x {tuple(x.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask.to(x.device).expand(x.shape[0], 1, *x.shape[2:])


class LayerMasked(nn.Module):
    """``forward(x, mask)`` = the wrapped model's output under layer masking.

    x: (N, C, H, W) float (NCHW or channels-last); mask: (N, 1, H, W) bool, True = keep. Shares the
    model's modules and weights; build it with :func:`layer_masked`. The generated graph is built on first
    use for each fill kind (see :func:`layer_masked`) and kept.
    """

    def __init__(self, traced: fx.GraphModule, *, reference: bool = False, fill: str = "auto",
                 compile: bool = False):
        super().__init__()
        self.reference, self.fill, self.compile = reference, fill, compile
        self.graphs = nn.ModuleDict()  # fill kind -> generated GraphModule
        # kept out of the module tree, so the model's weights are registered only once
        self.__dict__["_traced"], self.__dict__["_compiled"] = traced, {}

    def graph_module(self, device_type: str = "cpu") -> fx.GraphModule:
        """The generated GraphModule used for inputs on ``device_type`` (built on first use)."""
        return self.graphs[self._build(device_type)]

    @property
    def code(self) -> str:
        """Python source of the generated forward (the CPU one)."""
        return self.graph_module("cpu").code

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._compiled[self._build(x.device.type)](x, _check_mask(mask, x))

    def _build(self, device_type: str) -> str:
        """Builds (once) the graph for ``device_type``; returns its fill kind, the key of both dicts."""
        fill = self.fill
        if fill == "auto":  # a GPU prefers a few big kernels to index lists that need a host sync
            fill = "dense" if self.reference or device_type != "cpu" else "sparse"
        if fill not in self.graphs:
            self.graphs[fill] = _Transform(self._traced, optimize=not self.reference, fill=fill).build()
            self._compiled[fill] = torch.compile(self.graphs[fill]) if self.compile else self.graphs[fill]
        return fill


def layer_masked(model: nn.Module, *, compile: bool = False, reference: bool = False,
                 fill: str = "auto") -> LayerMasked:
    """The layer-masked version of ``model``: a module whose ``forward(x, mask)`` returns its logits.

    Built once per model and variant and cached (weakly: it goes with the model). Put the model in eval
    mode first. Raises NotImplementedError naming the first unsupported op (see ``SUPPORTED_OPS``).

    compile: wrap in ``torch.compile`` (slow first call, and again for each new input shape).
    reference: the literal, unoptimised algorithm (every conv/BN output re-masked, k-1 dense fill rounds).
    fill: "sparse" (in place, ring pixels only), "dense" (3x3 average pools over all channels), or "auto":
    sparse on the CPU, dense on other devices and for the reference.
    """
    if fill not in ("auto", "sparse", "dense"):
        raise ValueError(f"fill must be 'auto', 'sparse' or 'dense', got {fill!r}")

    def build() -> LayerMasked:
        traced = _traced(model)
        _Transform(traced, masked=True, optimize=not reference)  # raises now if an op is unsupported
        return LayerMasked(traced, reference=reference, fill=fill, compile=compile)

    return _cached(model, ("layer_masked", bool(compile), bool(reference), fill), build)


def layer_masked_forward(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    """``layer_masked(model, **kwargs)(x, mask)``: logits (N, num_classes) with removed pixels absent."""
    return layer_masked(model, **kwargs)(x, mask)


def feature_maps(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                 return_masks: bool = False):
    """(logits, {name: activation}) with the activation after every conv, ReLU and residual add.

    mask=None: the plain forward. With a mask (N, 1, H, W), True = keep: the layer-masked activations
    (reference variant, already multiplied by their mask, so removed regions stay exactly zero). Names
    are the torch.fx node names (e.g. ``stem_0``, ``stages_0_0_conv1``, ``add``) and are the same in both
    cases. return_masks=True adds a third dict {name: bool mask (N, 1, h, w)} of where each activation
    is visible (all True without a mask).
    """
    if mask is None:
        gm = _cached(model, ("features", "plain"),
                     lambda: _Transform(_traced(model), masked=False, record=True).build())
        logits, feats, _ = gm(x)
        masks = {k: torch.ones_like(v[:, :1], dtype=torch.bool) for k, v in feats.items()}
    else:
        gm = _cached(model, ("features", "masked"), lambda: _Transform(
            _traced(model), masked=True, optimize=False, fill="dense", record=True).build())
        logits, feats, masks = gm(x, _check_mask(mask, x))
        masks = {k: masks[k] > 0 if k in masks else torch.ones_like(v[:, :1], dtype=torch.bool)
                 for k, v in feats.items()}
    return (logits, feats, masks) if return_masks else (logits, feats)


def supports_layer_masking(model: nn.Module) -> bool:
    """Whether :func:`layer_masked` can transform ``model`` (see ``SUPPORTED_OPS``)."""
    try:
        _Transform(_traced(model), masked=True)
    except NotImplementedError:
        return False
    return True


class Normalized(nn.Module):
    """A classifier on images in ``[0, 1]`` that normalises them *outside* the layer-masked graph.

    ``forward(x)`` = ``model(normalize(x))``; ``forward_masked(x, mask)`` = the layer-masked ``model`` on
    ``normalize(x)``, which :func:`companion.masking.apply` calls for ``strategy="layer"``. The fill
    strategies thus fill in pixel space (before normalisation, as the official code does) and layer
    masking sees the same normalised input as the plain forward; only ``model`` is traced.

    Args:
        model: an fx-traceable CNN expecting normalised input, ``(N, C, H, W) -> logits``.
        normalize: ``(N, C, H, W) -> (N, C, H, W)``, e.g. ImageNet mean/std.
    """

    def __init__(self, model: nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return layer_masked(self.model)(self.normalize(x), mask)
