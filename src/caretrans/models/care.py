"""CARE Transformer: deCoupled duAl-interactive lineaR attEntion.

CARE-S0/S1/S2 from "CARE Transformer: Mobile-Friendly Linear Visual Transformer via
Decoupled Dual Interaction" (CVPR 2025), built to compute exactly what the released
checkpoints compute (docs/architecture.md).

The tensor that flows between blocks carries C = d + g channels: the first g are the
dynamic memory, the other d = 3g are the features. Each block splits the features
asymmetrically into a global part (g channels: long-range convs in stages 1-2, linear
attention in stages 3-4) and a local part (2g channels: 3x3 and 7x7 depthwise convs),
then mixes local with global (Inter1) and features with memory (Inter2). Structure options
build the variants of the paper's ablations (Tables 3-5) from the same modules.
"""
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import adapt_input_conv, checkpoint_seq
from timm.models._registry import generate_default_cfgs

from ..kernels import ForwardPath, captures_graph, check_mode, dispatch
from ..kernels import fused as _fused
from ..kernels import ops as _ops
from ..kernels import reference as _reference
from ..limits import MIN_INPUT_SIZE
from .checkpoint import CheckpointError, loading_source, match_state_dict, unwrap_state_dict
from .fusion import conv_with_weights, fold_batchnorm

__all__ = ['CareTransformer', 'checkpoint_filter_fn', 'MIN_INPUT_SIZE']


# How each module runs is one call: dispatch(kernels, x) (caretrans.kernels.paths) names the ForwardPath,
# the forward takes it. The fast paths branch on strides and map sizes, which graph capture must
# not see (EXPORT, COMPILE: plain ops); modules without fused ops ask in kernels='torch' mode.


class PointwiseConv(nn.Conv2d):
    """1x1 conv; on channels-last input it runs as one matrix product over the NHWC view."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__(in_chans, out_chans, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On CPU the GEMM is 1.3-3x faster than oneDNN's 1x1 conv, forward and backward
        # (docs/training.md); traced graphs keep the Conv op that runtimes fuse.
        if dispatch('torch', x) == ForwardPath.CHANNELS_LAST:
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return self._conv_forward(x, self.weight, self.bias)


class DepthwiseConv(nn.Conv2d):
    """Depthwise conv with 'same' padding; on maps smaller than its reach it skips the taps that only see padding."""

    def __init__(self, dim: int, kernel_size: Union[int, Tuple[int, int]]):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        super().__init__(dim, dim, (kh, kw), padding=(kh // 2, kw // 2), groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if captures_graph(dispatch('torch', x)):  # a traced graph must not bake in one input size
            return self._conv_forward(x, self.weight, self.bias)
        # Exact: a tap further than H-1 rows (W-1 columns) from the centre multiplies zero padding
        # for every output pixel, so its output and its gradient are zero. At 32x32 input the last
        # stages run on 2x2 and 1x1 maps, where the full kernels are mostly padding.
        kh, kw = self.kernel_size
        ch, cw = min(kh, 2 * x.shape[-2] - 1), min(kw, 2 * x.shape[-1] - 1)
        if ch == kh and cw == kw:
            return self._conv_forward(x, self.weight, self.bias)
        top, left = (kh - ch) // 2, (kw - cw) // 2
        weight = self.weight[:, :, top:top + ch, left:left + cw]
        bias = self.bias
        if ch == cw == 1 and bias is not None:
            return torch.addcmul(bias.view(1, -1, 1, 1), x, weight.view(1, -1, 1, 1))
        return F.conv2d(x, weight, self.bias, padding=(ch // 2, cw // 2), groups=self.groups)


@torch.jit.unused
def check_input(x: torch.Tensor, in_chans: int, training: bool = False) -> None:
    """Raise a ValueError naming what is wrong with an input batch for a CARE model."""
    if x.ndim != 4:
        raise ValueError(
            f'expected a 4-D batch (B, {in_chans}, H, W), got a {x.ndim}-D tensor of shape {tuple(x.shape)}')
    B, C, H, W = x.shape
    if C != in_chans:
        raise ValueError(
            f'expected {in_chans} input channel(s), got {C} (input shape {tuple(x.shape)}); '
            f'build the model with in_chans={C} to accept it')
    if H < MIN_INPUT_SIZE or W < MIN_INPUT_SIZE:
        raise ValueError(
            f'input of {H}x{W} is too small: CARE downsamples 32x, so each side needs at least '
            f'{MIN_INPUT_SIZE} pixels')
    if training and B * (H // 32) * (W // 32) == 1:
        raise ValueError(
            f'batch size 1 at {H}x{W} leaves a single value per channel at stride 32, which BatchNorm '
            'cannot normalise in training mode; use a batch of 2 or more, a larger input, or eval mode')


class Stem(nn.Module):
    """Patchify stem: 4x4 stride-4 conv followed by BatchNorm; it checks the input batch first."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size=4, stride=4)
        self.norm = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The stem is the first module of the classifier and of features_only models.
        if not captures_graph(dispatch('torch', x)):
            check_input(x, self.conv.in_channels, self.training)
        return self.norm(self.conv(x))

    def reparameterize(self):
        """Fold the BatchNorm into the conv."""
        fold_batchnorm(self, 'conv')


class Downsample(nn.Module):
    """BatchNorm then 2x2 stride-2 conv, acting on memory and features together (Eq. 11)."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chans)
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))

    def reparameterize(self):
        """Fold the BatchNorm into the (unpadded) conv that follows it."""
        fold_batchnorm(self, 'conv', norm_first=True)


class LongRangeConv(nn.Module):
    """Long-range mixing of stages 1-2: depthwise 11x1 plus depthwise 1x11, summed."""

    def __init__(self, dim: int, kernel_size: int = 11):
        super().__init__()
        self.conv_v = DepthwiseConv(dim, (kernel_size, 1))
        self.conv_h = DepthwiseConv(dim, (1, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_v(x) + self.conv_h(x)


class LinearAttention(nn.Module):
    """Multi-head linear attention with a positive kernel; v is the input itself."""

    def __init__(self, dim: int, head_dim: int, kernel: str = 'elu'):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f'attention width {dim} is not a multiple of head_dim {head_dim}')
        if kernel not in ('elu', 'identity'):
            raise ValueError(f"attention_kernel must be 'elu' or 'identity', got {kernel!r}")
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.kernel = kernel
        self.qk = PointwiseConv(dim, 2 * dim)
        self.kernels = 'auto'  # CareTransformer.set_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = dispatch(self.kernels, x)
        qk = self.qk(x)
        if path == ForwardPath.TRITON:
            return self._attention_op(qk, x)
        if path == ForwardPath.EXPORT:  # the ops runtimes know; an exported graph runs in the precision it is given
            return _reference.linear_attention(qk, x, self.num_heads, self.kernel == 'elu')
        out = self._attention_fp32(qk, x)
        # Keep a channels-last input's layout, or every later layer of the stage falls back to NCHW.
        return out.contiguous(memory_format=torch.channels_last) if path == ForwardPath.CHANNELS_LAST else out

    @torch.jit.unused
    def _attention_fp32(self, qk: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The attention with its sums over positions in fp32 under half precision and autocast."""
        return _reference.linear_attention_fp32(qk, x, self.num_heads, self.kernel == 'elu')

    @torch.jit.unused
    def _attention_op(self, qk: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _ops.linear_attention(qk, x, self.num_heads, self.kernel == 'elu')


class TokenMixer(nn.Module):
    """Decoupled token mixing: the channels split into [global | local 3x3 | local 7x7] groups, each mixed apart.

    Released (asymmetric) blocks have three groups of g channels; an ablation may drop a group
    (a width of 0) or give all local channels to one 3x3 conv (`local7` absent).
    """

    def __init__(self, global_mixer: Optional[nn.Module], widths: Tuple[int, int, int]):
        super().__init__()
        self.global_mixer = global_mixer
        self.local3 = DepthwiseConv(widths[1], 3) if widths[1] else None
        self.local7 = DepthwiseConv(widths[2], 7) if widths[2] else None
        self.widths = [w for w in widths if w]
        # The fused op takes the released layout only: three equal groups with both local convs.
        self.fusable = global_mixer is not None and len(self.widths) == 3 and len(set(self.widths)) == 1
        self.kernels = 'auto' if self.fusable else 'torch'  # CareTransformer.set_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if dispatch(self.kernels, x) == ForwardPath.TRITON:
            return self._mix_op(x)
        parts = x.split(self.widths, dim=1)
        out: List[torch.Tensor] = []
        if self.global_mixer is not None:
            out.append(self.global_mixer(parts[0]))
        if self.local3 is not None:
            out.append(self.local3(parts[len(out)]))
        if self.local7 is not None:
            out.append(self.local7(parts[len(out)]))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    @torch.jit.unused
    def _mix_op(self, x: torch.Tensor) -> torch.Tensor:
        return _fused.token_mix(self, x)


class StackedMixer(nn.Module):
    """No decoupling (MLLA-style stack, the paper's Eq. 3): local bias, global mixer, local bias, each
    over all feature channels."""

    def __init__(self, global_mixer: nn.Module, local_widths: Tuple[int, int]):
        super().__init__()
        self.local_in = TokenMixer(None, (0,) + local_widths)
        self.global_mixer = global_mixer
        self.local_out = TokenMixer(None, (0,) + local_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_out(self.global_mixer(self.local_in(x)))


class Interaction(nn.Module):
    """Interaction unit: BN -> 1x1 expand -> GELU -> 3x3 depthwise -> dropout [-> 1x1 project].

    Without `fc2` (the network's very last block) the expanded features are returned.
    """

    def __init__(self, dim: int, expansion: int, drop: float = 0.0, project: bool = True):
        super().__init__()
        hidden = dim * expansion
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = PointwiseConv(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = DepthwiseConv(hidden, 3)
        self.drop = nn.Dropout(drop)
        self.fc2 = PointwiseConv(hidden, dim) if project else nn.Identity()
        self.out_chans = dim if project else hidden
        self.kernels = 'auto'  # CareTransformer.set_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x, dispatch(self.kernels, x)))

    def hidden(self, x: torch.Tensor, path: ForwardPath) -> torch.Tensor:
        """The unit up to its projection on `path`: BN, 1x1 expansion, GELU, 3x3 depthwise, dropout."""
        h = self.norm(x)
        h = self._expand_op(h) if path == ForwardPath.TRITON else self.act(self.fc1(h))
        return self.drop(self.dwconv(h))

    @torch.jit.unused
    def _expand_op(self, h: torch.Tensor) -> torch.Tensor:
        return _fused.expand(self, h)

    def reparameterize(self):
        """Fold the pre-norm BatchNorm into the 1x1 expansion."""
        fold_batchnorm(self, 'fc1', norm_first=True)


# Structure options of the paper's ablations (Tables 3-5); the first of each is the released model.
DECOUPLINGS = ('asym', 'sym', 'stacked', 'no_local')
EARLY_MIXERS = ('conv', 'attention')
LOCAL_BIASES = ('multiscale', 'single')


def mixer_widths(dim: int, decoupling: str = 'asym', local: str = 'multiscale') -> Tuple[int, int, int]:
    """Channels of (global mixer, local 3x3, local 7x7) in a token mixer over `dim` feature channels.

    asym: d/3 global, d/3 + d/3 local (released); sym: d/2 global, d/2 local; stacked: every stage of
    the stack spans all d channels; no_local: d global, no local conv. `local='single'` gives all
    local channels to the 3x3 conv.
    """
    global_width, local_width = dict(
        asym=(dim // 3, dim - dim // 3), sym=(dim // 2, dim // 2), stacked=(dim, dim), no_local=(dim, 0))[decoupling]
    if local == 'single' or not local_width:
        return global_width, local_width, 0
    return global_width, local_width // 2, local_width // 2


def check_structure(dims: Sequence[int], decoupling: str = 'asym', inter1: bool = True, inter2: bool = True,
                    memory: bool = True, early: str = 'conv', local: str = 'multiscale'):
    """Raise a ValueError naming an unknown structure option, a bad combination, or dims that do not split."""
    for name, value, choices in (('decoupling', decoupling, DECOUPLINGS), ('early', early, EARLY_MIXERS),
                                 ('local', local, LOCAL_BIASES)):
        if value not in choices:
            raise ValueError(f'{name} must be one of {", ".join(map(repr, choices))}, got {value!r}')
    for name, value in (('inter1', inter1), ('inter2', inter2), ('memory', memory)):
        if not isinstance(value, bool):
            raise ValueError(f'{name} must be True or False, got {value!r}')
    if decoupling == 'no_local' and local != 'multiscale':
        raise ValueError(f"decoupling='no_local' has no local convs, so local={local!r} cannot apply")
    for d in dims:
        if d % 3:
            raise ValueError(f'feature dims must be multiples of 3 (d = 3g), got {tuple(dims)}')
        global_width, width3, width7 = mixer_widths(d, decoupling, local)
        split = (0 if decoupling == 'stacked' else global_width) + width3 + width7
        if split != d or (local == 'multiscale' and width3 != width7):
            raise ValueError(f'decoupling={decoupling!r} with local={local!r} cannot split {d} feature channels '
                             f'evenly (dims {tuple(dims)})')


# Attention head width per stage of the released model; stages 1-2 only use theirs with early='attention'.
HEAD_DIMS = (4, 8, 16, 32)


def default_head_dims(dims: Sequence[int], decoupling: str = 'asym', local: str = 'multiscale') -> List[int]:
    """Attention head width per stage: the released one where it divides the attention's width, else one head.

    One head only happens for CARE-S2 with decoupling='sym' (72 and 144 channels in stages 3-4).
    """
    widths = [mixer_widths(d, decoupling, local)[0] for d in dims]
    return [hd if w % hd == 0 else w for w, hd in zip(widths, HEAD_DIMS)]


def token_mixer(dim: int, use_attention: bool, head_dim: int, attention_kernel: str = 'elu',
                decoupling: str = 'asym', local: str = 'multiscale') -> nn.Module:
    """The token mixer of a block over `dim` feature channels: decoupled groups, or the stack."""
    global_width, width3, width7 = mixer_widths(dim, decoupling, local)
    if use_attention:
        global_mixer = LinearAttention(global_width, head_dim, kernel=attention_kernel)
    else:
        global_mixer = LongRangeConv(global_width)
    if decoupling == 'stacked':
        return StackedMixer(global_mixer, (width3, width7))
    return TokenMixer(global_mixer, (global_width, width3, width7))


class CareBlock(nn.Module):
    """CARE block: token mixing, Inter1 (local <-> global), Inter2 (features <-> memory).

    Ablations (docs/architecture.md) may drop Inter1, Inter2 (the block then adds its layer-scaled
    mixed features to its input) or the memory (mem_dim 0: Inter2 sees the features only).
    """

    def __init__(
            self,
            dim: int,
            mem_dim: int,
            expansion: Tuple[int, int],
            use_attention: bool,
            head_dim: int,
            attention_kernel: str = 'elu',
            drop: float = 0.0,
            drop_path: float = 0.0,
            layer_scale_init_value: float = 1e-6,
            last: bool = False,
            decoupling: str = 'asym',
            local: str = 'multiscale',
            inter1: bool = True,
            inter2: bool = True,
    ):
        super().__init__()
        last = last and inter2  # without Inter2 the last block is an ordinary one
        self.mem_dim = mem_dim
        self.last = last
        self.reparameterized = False
        self.token_mixer = token_mixer(dim, use_attention, head_dim, attention_kernel, decoupling, local)
        self.inter1 = Interaction(dim, expansion[0], drop) if inter1 else None
        self.inter2 = Interaction(dim + mem_dim, expansion[1], drop, project=not last) if inter2 else None
        self.out_chans = self.inter2.out_chans if self.inter2 is not None else dim + mem_dim
        # The fused block takes the released structure only (both units, a memory, a decoupled mixer).
        self.fusable = inter1 and inter2 and mem_dim > 0 and getattr(self.token_mixer, 'fusable', False)
        self.kernels = 'auto' if self.fusable else 'torch'  # CareTransformer.set_kernels
        if last:
            self.layer_scale = None
            self.drop_path = nn.Identity()
        else:
            self.layer_scale = nn.Parameter(torch.full((dim + mem_dim,), layer_scale_init_value))
            self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One dataflow for every path; on TRITON each projection's epilogue (bias, layer scale, drop
        # path, residual add) is one op.
        path = dispatch(self.kernels, x)
        memory, features = x[:, :self.mem_dim], x[:, self.mem_dim:]
        features = self.token_mixer(features)
        if self.inter1 is not None:
            features = self._inter1_op(features) if path == ForwardPath.TRITON else features + self.inter1(features)
        u = torch.cat([memory, features], dim=1) if self.mem_dim > 0 else features
        if self.inter2 is None:  # ablation: no Inter2 to fold the layer scale into
            self._check_trainable()
            return x + self.drop_path(self.layer_scale.view(1, -1, 1, 1) * u)
        if self.layer_scale is None:
            return self.inter2(u)
        self._check_trainable()
        if path == ForwardPath.TRITON:
            return self._inter2_op(x, u)
        if self.reparameterized:  # inference: the layer scale is folded into inter2.fc2
            return x + u * self.layer_scale.view(1, -1, 1, 1) + self.inter2(u)
        out = u + self.inter2(u)
        return x + self.drop_path(self.layer_scale.view(1, -1, 1, 1) * out)

    @torch.jit.unused
    def _inter1_op(self, features: torch.Tensor) -> torch.Tensor:
        """features + inter1(features)."""
        return _fused.project(self.inter1, self.inter1.hidden(features, ForwardPath.TRITON), features)

    @torch.jit.unused
    def _inter2_op(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x + drop_path(layer_scale * (u + inter2(u))), or x + layer_scale * u + inter2(u) re-parameterised."""
        return _fused.project(self.inter2, self.inter2.hidden(u, ForwardPath.TRITON), x, u, self.layer_scale,
                              _fused.drop_path_factors(self.drop_path, x), not self.reparameterized)

    def _check_trainable(self):
        if self.reparameterized and self.training:
            raise RuntimeError('this block is re-parameterised for inference and cannot be trained: '
                               'call model.eval() to run it')

    def reparameterize(self):
        """Fold the layer scale into inter2.fc2 (the interaction units fold their own BatchNorms).

        The token mixer's convs stay apart: merging them into one depthwise conv (11x11 cross plus
        padded 3x3 and 7x7) costs more MACs than the ops it saves (docs/performance.md).
        """
        if self.reparameterized:
            return
        if self.layer_scale is not None and self.inter2 is not None:
            scale = self.layer_scale.detach()
            fc2 = self.inter2.fc2
            self.inter2.fc2 = conv_with_weights(fc2, fc2.weight * scale.view(-1, 1, 1, 1), fc2.bias * scale)
        self.reparameterized = True


class CareStage(nn.Module):
    """A downsampling step (all stages but the first) and a sequence of CARE blocks."""

    def __init__(
            self,
            in_chans: int,
            dim: int,
            mem_dim: int,
            depth: int,
            expansion: Tuple[int, int],
            use_attention: bool,
            head_dim: int,
            downsample: bool,
            drop_path_rates: Sequence[float],
            last_stage: bool = False,
            **block_kwargs,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = Downsample(in_chans, dim + mem_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            CareBlock(
                dim, mem_dim, expansion, use_attention, head_dim,
                drop_path=drop_path_rates[i],
                last=last_stage and i == depth - 1,
                **block_kwargs,
            )
            for i in range(depth)
        ])
        self.out_chans = self.blocks[-1].out_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _pool(global_pool: str) -> SelectAdaptivePool2d:
    """timm's selectable global pooling (flattened); a ValueError for a type it does not know."""
    try:
        return SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
    except AssertionError:
        raise ValueError(f"unknown global_pool {global_pool!r}: use one of timm's pool types "
                         "('avg', 'max', 'avgmax', 'catavgmax', 'fast', ...) or '' for none") from None


class CareHead(nn.Module):
    """Classifier head: global pool -> GELU -> LayerNorm -> dropout -> Linear (released: 'avg' pool).

    With global_pool='' it classifies every position and keeps the (B, C, H, W) layout.
    """

    def __init__(self, in_features: int, num_classes: int, global_pool: str = 'avg', drop_rate: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.global_pool = _pool(global_pool)
        self.num_features = in_features * self.global_pool.feat_mult()
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            self.global_pool = _pool(global_pool)
            width = self.in_features * self.global_pool.feat_mult()
            if width != self.num_features:  # e.g. 'catavgmax' doubles the pooled width
                self.num_features = width
                self.norm = nn.LayerNorm(width, eps=self.norm.eps)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        per_position = self.global_pool.is_identity()
        # per position: channels last for LayerNorm / Linear
        x = x.permute(0, 2, 3, 1) if per_position else self.global_pool(x)
        x = self.drop(self.norm(self.act(x)))
        if not pre_logits:
            x = self.fc(x)
        return x.permute(0, 3, 1, 2) if per_position else x

    @classmethod
    def merged(cls, a: 'CareHead', b: 'CareHead') -> 'CareHead':
        """One head computing (a(x) + b(x)) / 2, exactly: both LayerNorms normalise the same vector,
        so their affine parts and the two classifiers fold into one Linear."""
        head = cls(a.in_features, a.fc.out_features, a.global_pool.pool_type, a.drop.p)
        head.norm = nn.LayerNorm(a.num_features, eps=a.norm.eps, elementwise_affine=False)
        weight = (a.fc.weight * a.norm.weight + b.fc.weight * b.norm.weight) / 2
        bias = (a.fc.weight @ a.norm.bias + a.fc.bias + b.fc.weight @ b.norm.bias + b.fc.bias) / 2
        head.fc.weight = nn.Parameter(weight.detach().clone())
        head.fc.bias = nn.Parameter(bias.detach().clone())
        return head


class CareTransformer(nn.Module):
    """CARE Transformer: a 4-stage backbone of CARE blocks with DeiT-style twin heads.

    decoupling, inter1, inter2, memory, early and local build the paper's ablations (Tables 3-5);
    their defaults are the released model (docs/architecture.md, "Ablation variants").
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 4, 8, 4),
            dims: Sequence[int] = (24, 48, 96, 192),
            expansions: Sequence[Tuple[int, int]] = ((2, 2), (2, 4), (4, 4), (4, 4)),
            head_dims: Optional[Sequence[int]] = None,
            attention_kernel: str = 'elu',
            layer_scale_init_value: float = 1e-6,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            distillation: bool = True,
            decoupling: str = 'asym',
            inter1: bool = True,
            inter2: bool = True,
            memory: bool = True,
            early: str = 'conv',
            local: str = 'multiscale',
            kernels: str = 'auto',
    ):
        super().__init__()
        check_structure(dims, decoupling, inter1, inter2, memory, early, local)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.distillation = distillation
        self.distilled_training = False  # as timm's DeiT: training returns one tensor unless turned on
        self.grad_checkpointing = False

        if head_dims is None:
            head_dims = default_head_dims(dims, decoupling, local)
        mem_dims = [d // 3 if memory else 0 for d in dims]
        chans = [d + g for d, g in zip(dims, mem_dims)]
        self.stem = Stem(in_chans, chans[0])
        attention_stages = [early == 'attention', early == 'attention', True, True]

        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths)).split(list(depths))]
        stages, prev, stride = [], chans[0], 4
        self.feature_info = []
        for i, depth in enumerate(depths):
            if i > 0:
                stride *= 2
            stage = CareStage(
                prev, dims[i], mem_dims[i], depth, tuple(expansions[i]), attention_stages[i], head_dims[i],
                downsample=i > 0,
                drop_path_rates=dpr[i],
                last_stage=i == len(depths) - 1,
                attention_kernel=attention_kernel,
                drop=proj_drop_rate,
                layer_scale_init_value=layer_scale_init_value,
                decoupling=decoupling,
                local=local,
                inter1=inter1,
                inter2=inter2,
            )
            stages.append(stage)
            prev = stage.out_chans
            self.feature_info.append(dict(num_chs=prev, reduction=stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = prev
        self.head = CareHead(prev, num_classes, global_pool, drop_rate)
        self.head_dist = CareHead(prev, num_classes, global_pool, drop_rate) if distillation else None
        self.head_hidden_size = self.head.num_features
        self.apply(self._init_weights)
        self.set_kernels(kernels)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters() if n.endswith('layer_scale')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def set_kernels(self, mode: str = 'auto'):
        """Fused Triton kernels: 'auto' runs them on CUDA, 'triton' wherever the ops run, 'torch' never
        (caretrans.kernels; the PyTorch path is the reference and the default on the CPU)."""
        self.kernels = check_mode(mode)
        for m in self.modules():
            if m is not self and hasattr(m, 'kernels'):  # the modules with fused ops
                m.kernels = mode if getattr(m, 'fusable', True) else 'torch'  # ablation layouts: PyTorch

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True):
        """In training, return (head, head_dist) logits apart, for DeiT distillation; off by default."""
        self.distilled_training = enable and self.head_dist is not None

    def reparameterize(self):
        """Merge the two heads into one (caretrans.reparameterize fuses the rest, module by module)."""
        if self.head_dist is not None and self.num_classes > 0:
            self.head = CareHead.merged(self.head, self.head_dist)
            self.head_dist = None
            self.distilled_training = False

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            _pool(global_pool)  # a clear error before anything changes
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        for head in (self.head, self.head_dist):
            if head is not None:
                head.reset(num_classes, global_pool)
        self.head_hidden_size = self.head.num_features

    @torch.jit.ignore
    def check_input(self, x: torch.Tensor):
        """Raise a ValueError naming what is wrong with an input batch (the stem runs this check)."""
        check_input(x, self.in_chans, self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits; the mean of the two heads, or both apart in distilled training (a tuple, outside TorchScript)."""
        if pre_logits or self.head_dist is None or self.num_classes == 0:
            return self.head(x, pre_logits=pre_logits)
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist  # the trainer's DistillationLoss takes both
        return (x + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the outputs of the selected stages (timm's intermediates API)."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        stages = self.stages if not stop_early else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x.permute(0, 2, 3, 1) if output_fmt == 'NHWC' else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) that the selected intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


# Released module names -> ours. The release names the heads `dist_head`, the layer scale
# `gamma` and the interaction units `inter_layer.inter{1,2}_*`.
_RELEASED_RENAMES = (
    (r'^stem\.0\.', 'stem.conv.'),
    (r'^stem\.1\.', 'stem.norm.'),
    (r'\.downsample\.0\.', '.downsample.norm.'),
    (r'\.downsample\.1\.', '.downsample.conv.'),
    (r'\.gamma$', '.layer_scale'),
    (r'\.token_mixer\.dwconvatt_1\.', '.token_mixer.global_mixer.conv_v.'),
    (r'\.token_mixer\.dwconvatt_2\.', '.token_mixer.global_mixer.conv_h.'),
    (r'\.token_mixer\.qk\.', '.token_mixer.global_mixer.qk.'),
    (r'\.token_mixer\.dwconv1\.', '.token_mixer.local3.'),
    (r'\.token_mixer\.dwconv2\.', '.token_mixer.local7.'),
    (r'\.inter_layer\.inter(\d)_norm\.', r'.inter\1.norm.'),
    (r'\.inter_layer\.inter(\d)_fc1\.', r'.inter\1.fc1.'),
    (r'\.inter_layer\.inter(\d)_conv\.', r'.inter\1.dwconv.'),
    (r'\.inter_layer\.inter(\d)_fc2\.', r'.inter\1.fc2.'),
    (r'^dist_head\.', 'head_dist.'),
)


def rename_released(key: str) -> str:
    """A released checkpoint's key in our module names (our own keys pass unchanged)."""
    for pattern, repl in _RELEASED_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: dict, model: CareTransformer, source: Optional[str] = None) -> dict:
    """Convert a released CARE checkpoint (or one of ours, possibly wrapped) to this model's names.

    The result is checked against the model: a checkpoint of another variant fails with a
    CheckpointError naming the keys; classifier weights of another class count are dropped.
    `source` names the checkpoint in messages (load_checkpoint's file by default).
    """
    source = loading_source(source)
    state_dict = unwrap_state_dict(state_dict, source)
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f'{source}: entry {k!r} is a {type(v).__name__}, not a tensor')
        if k.endswith('num_batches_tracked'):
            continue
        k = rename_released(k)
        if k.startswith('head_dist.') and model.head_dist is None:
            continue  # distillation=False keeps one head
        out[k] = v
    stem = out.get('stem.conv.weight')
    if stem is not None and stem.ndim == 4 and stem.shape[1] != model.in_chans:
        out['stem.conv.weight'] = adapt_input_conv(model.in_chans, stem)
    head_keys = [f'{h}.fc.{p}' for h in ('head', 'head_dist') for p in ('weight', 'bias')]
    return match_state_dict(out, model, head_keys=head_keys, source=source)


# A model's own filter: load_checkpoint converts a checkpoint with it when given none (timm keeps the
# pretrained filter with the model's builder only).
CareTransformer.checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)


def _create_care(variant: str, pretrained: bool = False, **kwargs) -> CareTransformer:
    if pretrained and variant not in ABLATIONS:
        _check_released_weights_given(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        CareTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


# The authors' release: code and README at RELEASE_REPO, checkpoints (CARETrans_S0.pth.tar and so on,
# plain state_dicts) in a Google Drive folder linked from that README. No hub serves them, so timm
# cannot download them: pass the file with pretrained_cfg_overlay=dict(file=...).
RELEASE_REPO = 'https://github.com/zhouyuan888888/CARE-Transformer'
RELEASE_WEIGHTS = 'https://drive.google.com/drive/folders/1UGRHQKjBGY8EjUtsHLsy9VBXp7rfUqkf'


def released_file_name(variant: str) -> str:
    """The file name of a variant's released checkpoint: care_s0 -> CARETrans_S0.pth.tar."""
    return f'CARETrans_{variant.split("_")[-1].upper()}.pth.tar'


def _check_released_weights_given(variant: str, pretrained_cfg, overlay):
    """pretrained=True needs a weights source; say where the release is instead of timm's generic error."""
    from pathlib import Path

    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, overlay)
    if cfg.source in ('hf-hub', 'local-dir') or cfg.state_dict is not None or cfg.url or cfg.hf_hub_id:
        return
    file = released_file_name(variant)
    how = (f"download {file} from the authors' release ({RELEASE_WEIGHTS}, linked from {RELEASE_REPO}) and "
           f"pass it: timm.create_model('{variant}', pretrained=True, pretrained_cfg_overlay=dict(file='{file}'))")
    if not cfg.file:
        raise RuntimeError(f'{variant}: no hub serves the released weights; {how}')
    if not Path(cfg.file).is_file():
        raise FileNotFoundError(f'{variant}: pretrained weights file {cfg.file} does not exist; {how}')


def _cfg(variant: str, **kwargs):
    return {
        'url': '',
        'hf_hub_id': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': (0.485, 0.456, 0.406),
        'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.conv',
        'classifier': ('head.fc', 'head_dist.fc'),
        'origin_url': RELEASE_REPO,
        'paper_ids': 'CVPR 2025',
        'paper_name': 'CARE Transformer: Mobile-Friendly Linear Visual Transformer via Decoupled Dual Interaction',
        'notes': (
            f"Released weights: {released_file_name(variant)} from {RELEASE_WEIGHTS}; load with "
            f"pretrained_cfg_overlay=dict(file='{released_file_name(variant)}').",
            'The licence of the released weights is not stated in the release README; check the release '
            'repository before redistributing them.',
        ),
        **kwargs,
    }


# The rows of the paper's ablation tables as named models: a released model and the structure
# options that make the row (docs/architecture.md, "Ablation variants"). No weights were released.
ABLATIONS = {
    'care_s2_sym': ('care_s2', dict(decoupling='sym')),
    'care_s2_stacked': ('care_s2', dict(decoupling='stacked')),
    'care_s2_no_local': ('care_s2', dict(decoupling='no_local')),
    'care_s0_no_inter1': ('care_s0', dict(inter1=False)),
    'care_s0_no_inter2': ('care_s0', dict(inter2=False)),
    'care_s0_no_memory': ('care_s0', dict(memory=False)),
    'care_s0_early_attn': ('care_s0', dict(early='attention')),
    'care_s1_early_attn': ('care_s1', dict(early='attention')),
    'care_s2_early_attn': ('care_s2', dict(early='attention')),
    'care_s0_single_local': ('care_s0', dict(local='single')),
    'care_s1_single_local': ('care_s1', dict(local='single')),
    'care_s2_single_local': ('care_s2', dict(local='single')),
}

default_cfgs = generate_default_cfgs({
    'care_s0.in1k': _cfg('care_s0'),
    'care_s1.in1k': _cfg('care_s1'),
    'care_s2.in1k': _cfg('care_s2'),
    **{name: _cfg(name, notes=('An ablation row of the paper: no weights were released.',)) for name in ABLATIONS},
})

# Architecture of each variant (docs/architecture.md, "Variants").
MODEL_ARGS = {
    'care_s0': dict(depths=(2, 4, 8, 4), dims=(24, 48, 96, 192), expansions=((2, 2), (2, 4), (4, 4), (4, 4))),
    'care_s1': dict(depths=(3, 6, 10, 6), dims=(24, 48, 96, 192), expansions=((2, 4), (2, 4), (4, 4), (4, 4))),
    'care_s2': dict(depths=(3, 6, 10, 6), dims=(24, 48, 144, 288), expansions=((4, 4), (4, 4), (4, 4), (4, 4))),
}


@register_model
def care_s0(pretrained: bool = False, **kwargs) -> CareTransformer:
    """CARE-S0: 7.34 M params, 0.72 GMACs at 224x224."""
    return _create_care('care_s0', pretrained, **dict(MODEL_ARGS['care_s0'], **kwargs))


@register_model
def care_s1(pretrained: bool = False, **kwargs) -> CareTransformer:
    """CARE-S1: 9.60 M params, 1.03 GMACs at 224x224."""
    return _create_care('care_s1', pretrained, **dict(MODEL_ARGS['care_s1'], **kwargs))


@register_model
def care_s2(pretrained: bool = False, **kwargs) -> CareTransformer:
    """CARE-S2: 19.48 M params, 1.93 GMACs at 224x224."""
    return _create_care('care_s2', pretrained, **dict(MODEL_ARGS['care_s2'], **kwargs))


def _create_ablation(name: str, pretrained: bool = False, **kwargs) -> CareTransformer:
    base, options = ABLATIONS[name]
    return _create_care(name, pretrained, **{**MODEL_ARGS[base], **options, **kwargs})


@register_model
def care_s2_sym(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 3 'w/ Sym': CARE-S2, features split in equal global and local halves (19.7 M, 2.0 GMACs)."""
    return _create_ablation('care_s2_sym', pretrained, **kwargs)


@register_model
def care_s2_stacked(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 3 'w/ Sta': CARE-S2, local bias -> global mixer -> local bias over all features (20.9 M, 2.1 GMACs)."""
    return _create_ablation('care_s2_stacked', pretrained, **kwargs)


@register_model
def care_s2_no_local(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 3 'w/o Local': CARE-S2, global mixer over all features, no local convs (20.7 M, 2.0 GMACs)."""
    return _create_ablation('care_s2_no_local', pretrained, **kwargs)


@register_model
def care_s0_no_inter1(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 4: CARE-S0 without Inter1 (5.5 M, 0.5 GMACs)."""
    return _create_ablation('care_s0_no_inter1', pretrained, **kwargs)


@register_model
def care_s0_no_inter2(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 4: CARE-S0 without Inter2 (2.7 M, 0.3 GMACs)."""
    return _create_ablation('care_s0_no_inter2', pretrained, **kwargs)


@register_model
def care_s0_no_memory(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 4: CARE-S0 without the memory; Inter2 sees the features only (5.4 M, 0.5 GMACs)."""
    return _create_ablation('care_s0_no_memory', pretrained, **kwargs)


@register_model
def care_s0_early_attn(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 5: CARE-S0 with linear attention in stages 1-2 too (7.34 M, 0.72 GMACs)."""
    return _create_ablation('care_s0_early_attn', pretrained, **kwargs)


@register_model
def care_s1_early_attn(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 5: CARE-S1 with linear attention in stages 1-2 too (9.60 M, 1.03 GMACs)."""
    return _create_ablation('care_s1_early_attn', pretrained, **kwargs)


@register_model
def care_s2_early_attn(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 5: CARE-S2 with linear attention in stages 1-2 too (19.48 M, 1.93 GMACs)."""
    return _create_ablation('care_s2_early_attn', pretrained, **kwargs)


@register_model
def care_s0_single_local(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 5: CARE-S0 with one 3x3 conv on all local channels (7.32 M, 0.71 GMACs)."""
    return _create_ablation('care_s0_single_local', pretrained, **kwargs)


@register_model
def care_s1_single_local(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 5: CARE-S1 with one 3x3 conv on all local channels (9.57 M, 1.02 GMACs)."""
    return _create_ablation('care_s1_single_local', pretrained, **kwargs)


@register_model
def care_s2_single_local(pretrained: bool = False, **kwargs) -> CareTransformer:
    """Table 5: CARE-S2 with one 3x3 conv on all local channels (19.43 M, 1.92 GMACs)."""
    return _create_ablation('care_s2_single_local', pretrained, **kwargs)
