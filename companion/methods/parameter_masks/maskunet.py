"""MaskUNet (Wang et al., CVPR 2025) at toy scale: timestep- and sample-dependent hard masks on a frozen UNet's
up-block weights, produced by a small hypernetwork trained with the plain diffusion loss.

Following the official code (``gudaochangsheng/MaskUnet``, ``training/hyperunet.py``, read, not copied):

- one :class:`MaskGenerator` per up block: the block's input and its skip connection, each average-pooled to the
  masked layer's kernel size (1×1 for a linear layer), concatenated, plus a projection of the time embedding, go
  through 1×1 conv → ReLU → 1×1 conv to a small *base mask* (N, out/f, in/f, k, k) — ``f`` = ``factor``, the channel
  counts being those of the block's first conv;
- one :class:`LayerAdapter` per masked layer: a linear map along the output axis (out/f → out) and one along the
  input axis (in/f → in), weights zero and biases ``init_logit`` (5), so every logit starts at 5 whatever the input;
- the logits go through a hard straight-through Gumbel-sigmoid (:func:`companion.masking.weights.gumbel_sigmoid`,
  one Gumbel draw per entry as in the code, in training and, as in the code's inference, in evaluation too;
  ``eval_noise=False`` uses ``logit > 0`` in evaluation instead): masks start all-ones (a logit of 5 survives a
  Gumbel draw with probability 1 − e⁻¹⁴⁸);
- each sample's masked weights W ⊙ M[n] replace the layer's weights for that sample
  (:func:`companion.masking.weights.weight_masks`: one grouped convolution for a conv, a batched einsum for a
  linear layer); biases and every other parameter of the UNet stay frozen.

Two deliberate departures, both stated in the notebook: (1) the time embedding is projected straight into the
generator's hidden layer (the code adds a projection of it to the pooled input before the first conv: the same
function class); (2) the code ends the generator with a ReLU after a zero-initialised conv, so the base mask starts
at exactly 0 where ReLU passes no gradient and the adapters' input-axis maps see a zero input: in that file nothing
upstream of the adapters' biases and output maps can ever receive a gradient, and the masks cannot depend on the
sample or the timestep. Here the generator's last conv keeps PyTorch's default initialisation and has no ReLU, so
the dependence can be learned (the adapters' zero weights still make every mask start all-ones).

The base is ``toy_sd``'s UNet (:class:`companion.models.toy_sd.ToySD`), called ``model(x_t, t, cond)``. Its one up
block is ``up`` (nearest upsampling + a 3×3 conv, 64 → 32 channels) and ``up_block`` (a residual block on the
concatenation with the skip, 64 → 32 → 32). Masks are computed in a forward pre-hook of ``unet.up`` from its input
(the 8×8 features), the skip (the output of ``unet.down``) and the time embedding (the output of
``unet.time_mlp``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...masking.weights import gumbel_sigmoid, weight_masks

# The up-block weights masked by default (names under ``model.unet``): the up conv and the residual block's two 3×3
# convs. The 1×1 skip conv and the time-embedding projection are left out, as the code leaves out ``conv_shortcut``
# and ``time_emb_proj``.
UP_BLOCK_LAYERS = ("up.1", "up_block.block1.2", "up_block.block2.2")
# The up path's cross-attention (level 0): the layers the code masks in Stable Diffusion's up blocks.
UP_ATTENTION_LAYERS = ("attn.0.attn.q", "attn.0.attn.kv", "attn.0.attn.proj")


def _kernel(module: nn.Module) -> tuple[int, int]:
    return tuple(module.kernel_size) if isinstance(module, nn.Conv2d) else (1, 1)


class MaskGenerator(nn.Module):
    """Pooled block features + time embedding → base masks (N, ref_out, ref_in, kh, kw) for one kernel size."""

    def __init__(self, in_channels: int, time_dim: int, ref_out: int, ref_in: int, hidden: int = 16):
        super().__init__()
        self.ref_out, self.ref_in = ref_out, ref_in
        self.features = nn.Conv2d(in_channels, hidden, 1)
        self.time = nn.Linear(time_dim, hidden, bias=False)
        self.base = nn.Conv2d(hidden, ref_out * ref_in, 1)

    def forward(self, features: list[torch.Tensor], emb: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
        """features: maps (N, C_i, H_i, W_i) with sum C_i = in_channels; emb (N, time_dim)."""
        x = torch.cat([F.adaptive_avg_pool2d(f, kernel) for f in features], dim=1)
        h = F.relu(self.features(x) + self.time(emb)[:, :, None, None])
        return self.base(h).view(len(x), self.ref_out, self.ref_in, *kernel)


class LayerAdapter(nn.Module):
    """Base masks (N, ref_out, ref_in, kh, kw) → one layer's logits (N, out, in, kh, kw): a linear map along each
    axis, zero weights and biases ``init_logit``, so the logits start at ``init_logit`` for every input."""

    def __init__(self, ref_out: int, ref_in: int, out_features: int, in_features: int, init_logit: float = 5.0):
        super().__init__()
        self.out_map = nn.Linear(ref_out, out_features)
        self.in_map = nn.Linear(ref_in, in_features)
        for lin in (self.out_map, self.in_map):
            nn.init.zeros_(lin.weight)
            nn.init.constant_(lin.bias, init_logit)

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        u = self.out_map(base.movedim(1, -1)).movedim(-1, 1)  # (N, out, ref_in, kh, kw)
        return self.in_map(u.movedim(2, -1)).movedim(-1, 2)  # (N, out, in, kh, kw)


class MaskUNet(nn.Module):
    """A frozen ``ToySD`` whose ``layers`` (names under ``base.unet``) compute with per-sample hard masks from the
    mask hypernetwork (module doc). ``base`` is used in place and frozen; only the generator and the adapters train.

    ``forward(x_t, t, cond)`` → eps, like the base; ``return_masks=True`` also returns ``{layer: (N, *W.shape)}``.
    The Gumbel noise comes from ``self.noise``, a generator seeded with ``seed`` (reseed it before an evaluation
    for repeatable masks); with ``eval_noise=False`` evaluation uses the deterministic masks ``logit > 0``.
    """

    def __init__(self, base: nn.Module, layers=UP_BLOCK_LAYERS, hidden: int = 16, factor: int = 4,
                 tau: float = 1.0, init_logit: float = 5.0, seed: int = 0, eval_noise: bool = True):
        super().__init__()
        self.base = base.requires_grad_(False)
        unet = base.unet
        if unet.time_mlp is None:
            raise ValueError("MaskUNet needs a UNet with a time embedding")
        self.layer_names = tuple(layers)
        self.targets = {name: unet.get_submodule(name) for name in self.layer_names}  # not registered: base's
        for name, m in self.targets.items():
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                raise TypeError(f"{name} is a {type(m).__name__}; mask nn.Conv2d or nn.Linear layers")
        ref = unet.up_block.block1[2]
        ref_out, ref_in = max(1, ref.out_channels // factor), max(1, ref.in_channels // factor)
        in_channels = unet.up[1].in_channels + unet.down.block2[2].out_channels
        self.generator = MaskGenerator(in_channels, unet.time_dim, ref_out, ref_in, hidden)
        self.adapters = nn.ModuleDict({
            name.replace(".", "_"): LayerAdapter(ref_out, ref_in, m.weight.shape[0], m.weight.shape[1], init_logit)
            for name, m in self.targets.items()})
        self.tau, self.eval_noise = tau, eval_noise
        self.noise = torch.Generator().manual_seed(seed)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.generator.parameters(), *self.adapters.parameters()]

    def logits(self, block_input: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mask logits per layer, {name: (N, *W.shape)} (linear layers: (N, out, in))."""
        bases, out = {}, {}
        for name, m in self.targets.items():
            k = _kernel(m)
            if k not in bases:
                bases[k] = self.generator([block_input, skip], emb, k)
            logit = self.adapters[name.replace(".", "_")](bases[k])
            out[name] = logit if isinstance(m, nn.Conv2d) else logit[..., 0, 0]
        return out

    def masks(self, block_input: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hard {0, 1} masks per layer, straight-through (Gumbel noise unless evaluating with ``eval_noise=False``)."""
        noise = "gumbel" if self.training or self.eval_noise else None
        return {name: gumbel_sigmoid(logit, self.tau, hard=True, noise=noise, generator=self.noise)
                for name, logit in self.logits(block_input, skip, emb).items()}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict, return_masks: bool = False):
        unet = self.base.unet
        seen: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        hooks = [unet.time_mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("emb", out)),
                 unet.down.register_forward_hook(lambda m, a, out: seen.__setitem__("skip", out)),
                 unet.up.register_forward_pre_hook(
                     lambda m, a: masks.update(self.masks(a[0], seen["skip"], seen["emb"])))]
        try:
            with weight_masks(self.targets, masks):
                eps = self.base(x, t, cond)
        finally:
            for h in hooks:
                h.remove()
        return (eps, masks) if return_masks else eps


def bias_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every bias of ``model`` (convs, linear layers, norms): BitFit's trainable set. Sets ``requires_grad`` on
    them and off on every other parameter."""
    out = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
        if p.requires_grad:
            out.append(p)
    return out


def count(params) -> int:
    return sum(p.numel() for p in params)


def eps_loss(sched, generator: torch.Generator):
    """``loss_fn(model, x0, captions)`` for ``train.fit``: the ε-MSE at a uniformly drawn level, text-to-image
    (``cond = {"captions": captions}``), levels and noise from ``generator``."""
    from ...diffusion.gaussian import diffusion_loss

    return lambda m, x0, captions: diffusion_loss(m, x0, sched, {"captions": captions}, generator=generator)


@torch.no_grad()
def mask_density_by_level(model: MaskUNet, x0: torch.Tensor, captions: torch.Tensor, sched, levels,
                          generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Share of kept weights per layer, sample and level: ``{layer: (len(levels), N)}`` for clean images ``x0``
    (N, 3, H, W) in model space, noised to each level with noise from ``generator`` (evaluation masks)."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {name: [] for name in model.layer_names}
    for level in levels:
        t = torch.full((len(x0),), int(level), dtype=torch.long)
        _, masks = model(sched.q_sample(x0, t, generator=generator), t, {"captions": captions}, return_masks=True)
        for name, m in masks.items():
            out[name].append(m.flatten(1).mean(1))
    return {name: torch.stack(v) for name, v in out.items()}
