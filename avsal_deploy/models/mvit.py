"""MViTv2-S video encoder (Li et al., CVPR 2022, "MViTv2: Improved Multiscale Vision Transformers"),
DiffSal's video backbone (Xiong et al., CVPR 2024, §5.1: MViTv2-S, Kinetics-400 16x4x1 weights).

Written here in the parameter layout of torchvision's ``mvit_v2_s`` (``MViT_V2_S_Weights``), so a
Kinetics-400 state dict in that layout loads strictly (layout ``torchvision-mvit_v2_s`` in
:mod:`avsal_deploy.models.weights`). Module names are torchvision's:

- ``conv_proj``: patch embedding Conv3d 3->96, kernel (3, 7, 7), stride (2, 4, 4), padding (1, 3, 3).
- ``pos_encoding.class_token`` [96]: the class token, prepended to the patch tokens. MViTv2 uses
  relative positional embeddings only (no absolute ``spatial_pos``/``temporal_pos``/``class_pos``).
- ``blocks.0`` .. ``blocks.15`` (:data:`MVIT_V2_S_BLOCKS`): pooled multi-head attention with
  depthwise Conv3d pooling (kernel 3^3) of q, k and v, each followed by a LayerNorm over the head
  dimension (``attn.pool_{q,k,v}.pool`` / ``.norm_act.0``); decomposed relative positional
  embeddings ``attn.rel_pos_{h,w,t}``; residual pooling (``attn(q) + q``, the class token
  excluded); channel expansion inside the attention at blocks 1, 3 and 14 (``attn.qkv`` widens,
  the shortcut goes through ``project`` from the normalised input, then a k(1,3,3)/s(1,2,2)
  max pool when q is pooled); MLP ratio 4 (``mlp.0``, ``mlp.3``).
- ``norm``: the final LayerNorm (768). ``head.1`` (the Kinetics classifier) is not built.

Multi-scale output (what DiffSal's Saliency-UNet takes as conditions, as its official code does
with mmaction2's ``MViT(arch="small", out_scales=[0, 1, 2, 3])``): the patch tokens after the last
block of each of the four stages (blocks 0, 2, 13, 15), class token dropped, as ``[B, C, T', H', W']``:

=====  =======  ========  =============================================
stage  blocks   channels  (T', H', W') for a [T, H, W] clip
=====  =======  ========  =============================================
0      0        96        T/2, ceil(H/4),  ceil(W/4)
1      1-2      192       T/2, ceil(H/8),  ceil(W/8)
2      3-13     384       T/2, ceil(H/16), ceil(W/16)
3      14-15    768       T/2, ceil(H/32), ceil(W/32)
=====  =======  ========  =============================================

(224x384x16: 56x96, 28x48, 14x24, 7x12 at 8 frames, the shapes of the official code.) Each output
is layer-normalised, as in the official code (mmaction2 ``norm0`` .. ``norm3``): stage 3 by the
pretrained ``norm``; stages 0-2 by ``stage_norms.0-2``, which torchvision's layout does not have
(trained here; identity at initialisation).

Positional tables and frame size. The relative-position tables have the shapes of the Kinetics
weights, i.e. they are sized for the clip the weights were trained on (:data:`PRETRAIN_INPUT`,
16x224x224: 8x56x56 tokens), whatever the configured frame size. For another frame size (the
paper's 224x384) each block resizes its tables at run time to ``2 * max(q, k) - 1`` entries per
axis by linear interpolation and indexes them with the scaled query/key distance, exactly as
torchvision's ``_add_rel_pos`` and the official code's ``resize_decomposed_rel_pos`` do (at
224x384 the height tables are used as trained and the width tables are stretched, e.g. block 0
from 111 to 191 entries). The token grids follow from the config's frame size, so every size and
index table is a Python constant or a buffer fixed at construction (the resize and the index are
folded into one constant matrix per axis, :func:`rel_lookup`): the forward pass has static shapes
and exports to ONNX with MatMul, Reshape, Transpose, Conv, MaxPool, LayerNormalization, Softmax
(no Resize, Gather or Einsum).

Input: frames normalised with the config's statistics (``video.mean``/``video.std``). The Kinetics
weights were trained with mean 0.45 / std 0.225 per channel; the official DiffSal code feeds its own
dataset statistics, so the backbone is fine-tuned on the normalisation it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsal_deploy.config import MVIT_STAGE_CHANNELS
from avsal_deploy.errors import ConfigError

if TYPE_CHECKING:
    from avsal_deploy.config import Config

Grid = tuple[int, int, int]  # (T, H, W) token grid


@dataclass(frozen=True)
class BlockSpec:
    """One MViTv2 block: heads, input/output channels and the q / kv pooling strides (kernel 3^3)."""

    heads: int
    dim_in: int
    dim_out: int
    stride_q: Grid
    stride_kv: Grid


def _mvit_v2_s_blocks() -> tuple[BlockSpec, ...]:
    # MViTv2-S (MViTv2 paper Table 1 / torchvision mvit_v2_s): 16 blocks in 4 stages of 1, 2, 11, 2;
    # the first block of stages 1-3 pools q by (1, 2, 2) and doubles heads and channels; the kv
    # stride starts at (1, 8, 8) and halves with every q pooling ("adaptive kv stride").
    heads = (1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8)
    dims = (96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 768, 768)
    out, dim_in, kv = [], 96, 8
    for i, (h, d) in enumerate(zip(heads, dims, strict=True)):
        pools = i in (1, 3, 14)
        kv = max(kv // 2, 1) if pools else kv
        sq = (1, 2, 2) if pools else (1, 1, 1)
        out.append(BlockSpec(h, dim_in, d, sq, (1, kv, kv)))
        dim_in = d
    return tuple(out)


MVIT_V2_S_BLOCKS: tuple[BlockSpec, ...] = _mvit_v2_s_blocks()
STAGE_LAST_BLOCK: tuple[int, int, int, int] = (0, 2, 13, 15)  # the block ending each stage
PATCH_KERNEL: Grid = (3, 7, 7)
PATCH_STRIDE: Grid = (2, 4, 4)
PATCH_PADDING: Grid = (1, 3, 3)
POOL_KERNEL: Grid = (3, 3, 3)
MLP_RATIO = 4
LN_EPS = 1e-6  # torchvision: partial(nn.LayerNorm, eps=1e-6) everywhere
PRETRAIN_INPUT: Grid = (16, 224, 224)  # the Kinetics-400 clip the positional tables are sized for


def conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution / pool along one axis (floor mode)."""
    return (n + 2 * padding - kernel) // stride + 1


def _pooled(grid: Grid, kernel: Grid, stride: Grid) -> Grid:
    """The grid after a pooling conv with ``padding = kernel // 2`` (MViT's pools); identity at stride 1."""
    return tuple(conv_out(n, k, s, k // 2) for n, k, s in zip(grid, kernel, stride, strict=True))  # type: ignore[return-value]


def patch_grid(frames: int, height: int, width: int) -> Grid:
    """Token grid after the patch embedding (ceil(T/2), ceil(H/4), ceil(W/4))."""
    return tuple(  # type: ignore[return-value]
        conv_out(n, k, s, p)
        for n, k, s, p in zip((frames, height, width), PATCH_KERNEL, PATCH_STRIDE, PATCH_PADDING, strict=True)
    )


def block_grids(frames: int, height: int, width: int) -> tuple[tuple[Grid, Grid, Grid], ...]:
    """Per block: (input grid, query grid = output grid, key/value grid)."""
    grid = patch_grid(frames, height, width)
    out = []
    for spec in MVIT_V2_S_BLOCKS:
        q = _pooled(grid, POOL_KERNEL, spec.stride_q)
        kv = _pooled(grid, POOL_KERNEL, spec.stride_kv)
        out.append((grid, q, kv))
        grid = q
    return tuple(out)


def rel_pos_table_sizes() -> tuple[tuple[int, int], ...]:
    """Per block: (spatial, temporal) lengths of the relative-position tables of the Kinetics weights.

    torchvision's rule at its construction size (:data:`PRETRAIN_INPUT`): ``size = max(H, W)`` of
    the block's input grid (integer-divided by the strides), spatial ``2 * max(size // s_q,
    size // s_kv) - 1``, temporal ``2 * T - 1``.
    """
    t, h, w = (n // s for n, s in zip(PRETRAIN_INPUT, PATCH_STRIDE, strict=True))
    out = []
    for spec in MVIT_V2_S_BLOCKS:
        size = max(h, w)
        spatial = 2 * max(size // spec.stride_q[1], size // spec.stride_kv[1]) - 1
        out.append((spatial, 2 * t - 1))
        t, h, w = t // spec.stride_q[0], h // spec.stride_q[1], w // spec.stride_q[2]
    return tuple(out)


def rel_distance(q: int, k: int) -> Tensor:
    """Index ``[q, k]`` into a ``2 * max(q, k) - 1`` table: the query-key distance, scaled to the
    finer of the two grids when their sizes differ (MViTv2 / torchvision ``_add_rel_pos``)."""
    q_ratio = max(k / q, 1.0)
    k_ratio = max(q / k, 1.0)
    dist = torch.arange(q)[:, None] * q_ratio - (torch.arange(k)[None, :] + (1.0 - k)) * k_ratio
    return dist.long()


def rel_lookup(q: int, k: int, rows: int, length: int) -> Tensor:
    """``[q, k, rows]`` matrix taking a ``rows``-entry table to the embedding of each query-key pair.

    The table is resized to ``length = 2 * max(q, k) - 1`` entries by linear interpolation
    (``F.interpolate(mode="linear")``, as torchvision's ``_interpolate``; skipped when the length
    already fits) and indexed by :func:`rel_distance`. Interpolation is linear in the table, so
    applying it to the identity gives its matrix exactly.
    """
    resize = torch.eye(rows)
    if rows != length:
        resize = F.interpolate(resize.unsqueeze(0), size=length, mode="linear").squeeze(0)  # [rows, length]
    return resize.t()[rel_distance(q, k)]


class Pool(nn.Module):
    """Pooling of a token sequence over its (T, H, W) grid, the class token (first) passed through.

    Input ``[B, N, 1 + L, C]`` (heads N) or ``[B, 1 + L, C]``; ``pool`` runs on ``[B*N, C, T, H, W]``;
    ``norm`` (LayerNorm over C) follows the pool, on every token (torchvision ``Pool``,
    ``norm_before_pool=False``). Grids are static: given at construction.
    """

    def __init__(self, pool: nn.Module, norm: nn.Module | None, grid: Grid, out_grid: Grid) -> None:
        super().__init__()
        self.pool = pool
        self.norm_act = nn.Sequential(norm) if norm is not None else None
        self.grid = grid
        self.out_grid = out_grid

    def forward(self, x: Tensor) -> Tensor:
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(1)
        b, n, _, c = x.shape
        cls, tokens = x[:, :, :1], x[:, :, 1:]
        tokens = tokens.transpose(2, 3).reshape(b * n, c, *self.grid)
        tokens = self.pool(tokens).reshape(b, n, c, math.prod(self.out_grid)).transpose(2, 3)
        x = torch.cat((cls, tokens), dim=2)
        if self.norm_act is not None:
            x = self.norm_act(x)
        return x.squeeze(1) if squeeze else x


def _pool_conv(dim: int, stride: Grid) -> nn.Conv3d:
    return nn.Conv3d(
        dim,
        dim,
        POOL_KERNEL,
        stride=stride,
        padding=tuple(k // 2 for k in POOL_KERNEL),
        groups=dim,
        bias=False,
    )


class MultiscaleAttention(nn.Module):
    """Pooled multi-head attention with decomposed relative positions and residual pooling."""

    def __init__(
        self, spec: BlockSpec, grids: tuple[Grid, Grid, Grid], tables: tuple[int, int], ln_eps: float = LN_EPS
    ) -> None:
        super().__init__()
        grid, q_grid, kv_grid = grids
        self.heads = spec.heads
        self.head_dim = spec.dim_out // spec.heads
        self.dim_out = spec.dim_out
        self.scaler = 1.0 / math.sqrt(self.head_dim)
        self.q_grid, self.kv_grid = q_grid, kv_grid
        self.qkv = nn.Linear(spec.dim_in, 3 * spec.dim_out)
        self.project = nn.Sequential(nn.Linear(spec.dim_out, spec.dim_out))
        hd = self.head_dim
        # kernel 3^3 > 1, so all three pools exist in every block (as in torchvision's mvit_v2_s)
        self.pool_q = Pool(_pool_conv(hd, spec.stride_q), nn.LayerNorm(hd, eps=ln_eps), grid, q_grid)
        self.pool_k = Pool(_pool_conv(hd, spec.stride_kv), nn.LayerNorm(hd, eps=ln_eps), grid, kv_grid)
        self.pool_v = Pool(_pool_conv(hd, spec.stride_kv), nn.LayerNorm(hd, eps=ln_eps), grid, kv_grid)
        spatial, temporal = tables
        self.rel_pos_h = nn.Parameter(torch.zeros(spatial, hd))
        self.rel_pos_w = nn.Parameter(torch.zeros(spatial, hd))
        self.rel_pos_t = nn.Parameter(torch.zeros(temporal, hd))
        for p in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
            nn.init.trunc_normal_(p, std=0.02)
        # Static look-up per axis: the table length the grids need and, folded into one matrix
        # [q, k, table rows], the linear resize of the table to that length followed by the
        # distance index. Embeddings = matrix @ table (MatMul in ONNX, no Resize/Gather); kept out
        # of the state dict (derived from the grids).
        self.table_len = tuple(2 * max(q, k) - 1 for q, k in zip(q_grid, kv_grid, strict=True))
        rows = (temporal, spatial, spatial)
        for axis, q, k, n, length in zip("thw", q_grid, kv_grid, rows, self.table_len, strict=True):
            self.register_buffer(f"lookup_{axis}", rel_lookup(q, k, n, length), persistent=False)

    def _rel_pos(self, q: Tensor) -> Tensor:
        """Decomposed relative-position term ``[B, heads, Lq, Lk]`` for the patch tokens of ``q``."""
        (qt, qh, qw), (kt, kh, kw) = self.q_grid, self.kv_grid
        rt = torch.matmul(self.lookup_t, self.rel_pos_t)  # [qt, kt, d]
        rh = torch.matmul(self.lookup_h, self.rel_pos_h)  # [qh, kh, d]
        rw = torch.matmul(self.lookup_w, self.rel_pos_w)  # [qw, kw, d]
        d = self.head_dim
        # The einsums 'bythwc,{t,h,w}kc->bythwk' as broadcast matmuls over the axis each table
        # belongs to, with no transpose of the activations (the dynamo exporter's optimiser
        # mis-folds permute/reshape chains around the batch axis).
        r_q = q[:, :, 1:]
        rel_t = torch.matmul(r_q.reshape(-1, qt, qh * qw, d), rt.transpose(1, 2))  # [Bh, qt, qh*qw, kt]
        rel_h = torch.matmul(r_q.reshape(-1, qh, qw, d), rh.transpose(1, 2))  # [Bh*qt, qh, qw, kh]
        rel_w = torch.matmul(r_q.reshape(-1, qw, 1, d), rw.transpose(1, 2))  # [Bh*qt*qh*qw, 1, kw]
        shape = (-1, self.heads, qt, qh, qw)
        rel_t = rel_t.reshape(*shape, kt)
        rel_h = rel_h.reshape(*shape, kh)
        rel_w = rel_w.reshape(*shape, kw)
        rel = (
            rel_t[:, :, :, :, :, :, None, None]
            + rel_h[:, :, :, :, :, None, :, None]
            + rel_w[:, :, :, :, :, None, None, :]
        )
        return rel.reshape(-1, self.heads, qt * qh * qw, kt * kh * kw)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).transpose(1, 3)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, heads, N, head_dim]
        k = self.pool_k(k)
        v = self.pool_v(v)
        q = self.pool_q(q)
        attn = torch.matmul(self.scaler * q, k.transpose(2, 3))
        attn = attn + F.pad(self._rel_pos(q), (1, 0, 1, 0))  # the class token row/column get none
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v) + F.pad(q[:, :, 1:], (0, 0, 1, 0))  # residual pooling, no cls
        out = out.transpose(1, 2).reshape(b, -1, self.dim_out)
        return self.project(out)


class MultiscaleBlock(nn.Module):
    """Pre-LN block: ``skip(x) + attn(LN(x))``, then ``x + MLP(LN(x))`` (torchvision, proj after attn)."""

    def __init__(
        self, spec: BlockSpec, grids: tuple[Grid, Grid, Grid], tables: tuple[int, int], ln_eps: float = LN_EPS
    ) -> None:
        super().__init__()
        grid, q_grid, _ = grids
        self.norm1 = nn.LayerNorm(spec.dim_in, eps=ln_eps)
        self.attn = MultiscaleAttention(spec, grids, tables, ln_eps)
        self.norm2 = nn.LayerNorm(spec.dim_out, eps=ln_eps)
        hidden = MLP_RATIO * spec.dim_out
        # torchvision ops.MLP indices: 0 Linear, 1 GELU, 2 Dropout, 3 Linear, 4 Dropout (p = 0 here)
        self.mlp = nn.Sequential(
            nn.Linear(spec.dim_out, hidden),
            nn.GELU(),
            nn.Identity(),
            nn.Linear(hidden, spec.dim_out),
            nn.Identity(),
        )
        self.project = nn.Linear(spec.dim_in, spec.dim_out) if spec.dim_in != spec.dim_out else None
        self.pool_skip: Pool | None = None
        if math.prod(spec.stride_q) > 1:
            kernel = tuple(s + 1 if s > 1 else s for s in spec.stride_q)
            pad = tuple(k // 2 for k in kernel)
            self.pool_skip = Pool(nn.MaxPool3d(kernel, stride=spec.stride_q, padding=pad), None, grid, q_grid)

    def forward(self, x: Tensor) -> Tensor:
        x_norm1 = self.norm1(x)
        x_attn = self.attn(x_norm1)
        if self.project is not None:
            x = self.project(x_norm1)
        if self.pool_skip is not None:
            x = self.pool_skip(x)
        x = x + x_attn
        return x + self.mlp(self.norm2(x))


class PositionalEncoding(nn.Module):
    """Prepends the class token (MViTv2: relative positions only, no absolute table)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.class_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        cls = self.class_token.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        return torch.cat((cls, x), dim=1)


class MViTv2S(nn.Module):
    """MViTv2-S returning its four stage outputs ``[B, C_i, T/2, H_i, W_i]`` (see the module docstring).

    ``frames``/``height``/``width``: the clip the encoder is built for (static token grids).
    ``ln_eps``: the epsilon of every LayerNorm (torchvision's 1e-6; mmaction2's ``MViT``, which the
    official DiffSal code uses, builds ``nn.LayerNorm`` at its default 1e-5). ``carry_stage_norms``:
    the normalised tokens of a stage (class token included) are also what the next stage takes, as
    in mmaction2's forward (``x = norm{i}(x)`` in the block loop); without it (ours, torchvision's
    structure) only the output copy is normalised.
    """

    def __init__(
        self, frames: int, height: int, width: int, *, ln_eps: float = LN_EPS, carry_stage_norms: bool = False
    ) -> None:
        super().__init__()
        self.carry_stage_norms = bool(carry_stage_norms)
        grids = block_grids(frames, height, width)
        if any(n < 1 for g in grids for grid in g for n in grid):
            raise ConfigError(f"clip {frames}x{height}x{width} is too small for MViTv2-S")
        self.grid = patch_grid(frames, height, width)
        self.stage_grids: tuple[Grid, ...] = tuple(grids[i][1] for i in STAGE_LAST_BLOCK)
        first = MVIT_V2_S_BLOCKS[0].dim_in
        self.conv_proj = nn.Conv3d(3, first, PATCH_KERNEL, stride=PATCH_STRIDE, padding=PATCH_PADDING)
        self.pos_encoding = PositionalEncoding(first)
        tables = rel_pos_table_sizes()
        self.blocks = nn.ModuleList(
            MultiscaleBlock(spec, g, tab, ln_eps)
            for spec, g, tab in zip(MVIT_V2_S_BLOCKS, grids, tables, strict=True)
        )
        self.norm = nn.LayerNorm(MVIT_V2_S_BLOCKS[-1].dim_out, eps=ln_eps)
        self.stage_norms = nn.ModuleList(nn.LayerNorm(c, eps=ln_eps) for c in MVIT_STAGE_CHANNELS[:-1])
        self.out_channels: tuple[int, ...] = tuple(MVIT_V2_S_BLOCKS[i].dim_out for i in STAGE_LAST_BLOCK)
        assert self.out_channels == MVIT_STAGE_CHANNELS
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, frames: Tensor) -> list[Tensor]:
        x = self.conv_proj(frames).flatten(2).transpose(1, 2)
        x = self.pos_encoding(x)
        outs: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in STAGE_LAST_BLOCK:
                stage = len(outs)
                norm = self.norm if stage == len(STAGE_LAST_BLOCK) - 1 else self.stage_norms[stage]
                if self.carry_stage_norms:
                    x = norm(x)
                    tokens = x[:, 1:]
                else:
                    tokens = norm(x[:, 1:])
                c = tokens.shape[-1]
                outs.append(tokens.transpose(1, 2).reshape(-1, c, *self.stage_grids[stage]))
        return outs


def build_mvit(config: Config, variant: str = "diffsal") -> MViTv2S:
    """The MViTv2-S encoder for ``config``'s clip of ``variant`` (its positional index tables)."""
    _, t, h, w = config.frames_shape(variant)
    return MViTv2S(t, h, w)
