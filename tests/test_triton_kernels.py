"""The Triton kernels against their PyTorch references: outputs and gradients, layouts, fp32 and half precision.

These run where the kernels run: on CUDA (small shapes, then the real ones), or on the CPU under
Triton's interpreter, which must be switched on before triton is imported - so on a machine
without CUDA, tests/test_kernels.py runs this file in a subprocess with TRITON_INTERPRET=1, and a
direct run skips it. Tolerances (scaled by each tensor's largest value) are the measured errors
with a margin; docs/performance.md lists them.
"""
import os

import pytest
import timm
import torch

import caretrans
from caretrans.kernels import TRITON_INSTALLED, ops, reference

INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
CUDA = torch.cuda.is_available() and not INTERPRETED
DEVICE = 'cuda' if CUDA else 'cpu'

pytestmark = pytest.mark.skipif(
    not TRITON_INSTALLED or not (CUDA or INTERPRETED),
    reason='the Triton kernels run on CUDA, or on the CPU under TRITON_INTERPRET=1 '
           '(tests/test_kernels.py::test_triton_kernels_under_the_interpreter)')
cuda_only = pytest.mark.skipif(not CUDA, reason='real shapes: CUDA only (too slow for the interpreter)')

# Largest |error| / largest |reference value| allowed, per dtype. The half-precision references
# are computed in fp32 from the same half inputs: the kernels compute in fp32 and round once.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
HALF = [torch.float16, torch.bfloat16]


def _assert_close(actual, expected, dtype, what=''):
    assert actual.shape == expected.shape and actual.dtype == dtype, what
    # Scaled by the largest value, at least 0.01: a gradient that cancels to ~0 (e.g. d q of attention
    # over a single position) is compared with the inputs' unit scale, not with its own rounding noise.
    scale = max(expected.abs().max().item(), 1e-2)
    error = (actual.float() - expected.float()).abs().max().item()
    assert error <= TOLERANCE[dtype] * scale, f'{what}: max |error| {error:.3g} > {TOLERANCE[dtype]:g} x {scale:.3g}'


def _map(shape, layout='nchw', dtype=torch.float32, seed=0, scale=1.0):
    """A random map in `layout`: 'nchw', 'cl' (channels-last) or 'slice' (channels [C, 2C) of a channels-last map)."""
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    if layout == 'slice':
        t = torch.randn(B, 3 * C, H, W, generator=g).contiguous(memory_format=torch.channels_last)[:, C:2 * C]
    else:
        t = torch.randn(shape, generator=g)
        if layout == 'cl':
            t = t.contiguous(memory_format=torch.channels_last)
    return (t * scale).to(device=DEVICE, dtype=dtype)


def _param(shape, dtype=torch.float32, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(1000 + seed)
    return (torch.randn(shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def _check_op(op, ref, inputs, args=(), dtype=torch.float32, what=''):
    """op(*inputs, *args) and its gradients w.r.t. the tensor inputs match ref's, computed in fp32."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    out = op(*leaves, *args)
    upcast = [t.detach().float().requires_grad_() if t is not None else None for t in inputs]
    expected = ref(*upcast, *args)
    _assert_close(out, expected, dtype, f'{what} output')
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7)).to(device=DEVICE)
    present = [i for i, t in enumerate(leaves) if t is not None]
    grad = grad.to(out.dtype)  # both sides get the same (rounded) upstream gradient
    got = torch.autograd.grad(out, [leaves[i] for i in present], grad)
    want = torch.autograd.grad(expected, [upcast[i] for i in present], grad.float())
    for i, a, e in zip(present, got, want):
        _assert_close(a, e, leaves[i].dtype, f'{what} grad of input {i}')
    return out


# ---------------------------------------------------------------------------------------- linear attention

ATTENTION_CASES = [  # batch, heads, head dim, H, W
    (2, 2, 16, 3, 5),
    (1, 1, 32, 9, 9),  # N = 81: two blocks of positions
    (2, 3, 8, 2, 2),  # a head dim below tl.dot's 16, padded
    (2, 2, 16, 1, 1),
]


@pytest.mark.parametrize('case', ATTENTION_CASES)
@pytest.mark.parametrize('layout', ['nchw', 'slice'])
def test_linear_attention(case, layout):
    B, heads, head_dim, H, W = case
    C = heads * head_dim
    qk = _map((B, 2 * C, H, W), 'cl' if layout == 'slice' else layout, seed=1)
    v = _map((B, C, H, W), layout, seed=2)
    out = _check_op(ops.linear_attention, reference.linear_attention, [qk, v], (heads, True), what=str(case))
    assert out.is_contiguous(memory_format=ops.memory_format(v))


def test_linear_attention_identity_kernel():
    qk = _map((2, 32, 4, 4), seed=1).abs() + 0.1  # positive, as the kernel assumes
    _check_op(ops.linear_attention, reference.linear_attention, [qk, _map((2, 16, 4, 4), seed=2)], (1, False))


@pytest.mark.parametrize('dtype', HALF)
def test_linear_attention_half(dtype):
    qk, v = _map((2, 64, 5, 5), 'cl', dtype, seed=1), _map((2, 32, 5, 5), 'slice', dtype, seed=2)
    _check_op(ops.linear_attention, reference.linear_attention, [qk, v], (2, True), dtype)


@pytest.mark.parametrize('dtype', HALF)
def test_linear_attention_half_large_inputs(dtype):
    """Inputs of magnitude 1e3: k^T v sums products of 1e6 over the positions, beyond fp16's 65504, while the
    output (v's magnitude) fits; the kernels sum in fp32."""
    qk = _map((2, 64, 5, 5), 'cl', dtype, seed=1, scale=1e3)
    v = _map((2, 32, 5, 5), 'slice', dtype, seed=2, scale=1e3)
    out = _check_op(ops.linear_attention, reference.linear_attention, [qk, v], (2, True), dtype)
    assert out.isfinite().all()


# ---------------------------------------------------------------------------------------- token mixer

def _mixer_inputs(G, H, W, glob_mode, layout, dtype=torch.float32):
    x = _map((1 if G > 4 else 2, (2 if glob_mode else 3) * G, H, W), layout, dtype, seed=3)
    glob = _map((x.shape[0], G, H, W), layout, dtype, seed=4) if glob_mode else None
    weights = [_param(s, dtype, i) for i, s in enumerate([(G, 1, 3, 3), (G,), (G, 1, 7, 7), (G,)])]
    long_range = [None] * 4 if glob_mode else [_param(s, dtype, 4 + i) for i, s in
                                                enumerate([(G, 1, 11, 1), (G,), (G, 1, 1, 11), (G,)])]
    return [x, glob] + weights + long_range


MIXER_CASES = [  # g, H, W
    (4, 5, 6),
    (3, 17, 19),  # two pixel tiles, maps wider than the 11-tap convs
    (8, 2, 2),  # maps smaller than the kernels (stages 3-4 at 32x32 input)
    (8, 1, 1),
]


@pytest.mark.parametrize('case', MIXER_CASES)
@pytest.mark.parametrize('glob_mode', [False, True], ids=['long-range', 'attention'])
def test_token_mix(case, glob_mode):
    out = _check_op(ops.token_mix, reference.token_mix, _mixer_inputs(*case, glob_mode, 'nchw'), what=str(case))
    assert out.is_contiguous()


@pytest.mark.parametrize('glob_mode', [False, True], ids=['long-range', 'attention'])
def test_token_mix_channels_last_slice(glob_mode):
    inputs = _mixer_inputs(4, 6, 5, glob_mode, 'slice')
    out = _check_op(ops.token_mix, reference.token_mix, inputs)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('dtype', HALF)
def test_token_mix_half(dtype):
    _check_op(ops.token_mix, reference.token_mix, _mixer_inputs(4, 6, 7, False, 'cl', dtype), dtype=dtype)


# ---------------------------------------------------------------------------------------- epilogues

@pytest.mark.parametrize('layout', ['nchw', 'cl'])
@pytest.mark.parametrize('dtype', [torch.float32] + HALF)
def test_bias_gelu(layout, dtype):
    y = _map((2, 70, 3, 5), layout, dtype, seed=5, scale=2.0)  # 70 channels: two channel tiles
    bias = _param((70,), seed=6).to(dtype).float()  # fp32 values that the op's rounding to y's dtype keeps
    _check_op(ops.bias_gelu, reference.bias_gelu, [y, bias], dtype=dtype)


RESIDUAL_FORMS = {  # u, scale, drop-path factors, scale_y
    'inter1': (False, False, False, True),
    'block': (True, True, False, True),
    'block-drop-path': (True, True, True, True),
    'block-reparameterised': (True, True, False, False),
    'scale-only': (False, True, True, True),
    'u-only': (True, False, False, True),
}


@pytest.mark.parametrize('form', RESIDUAL_FORMS)
@pytest.mark.parametrize('layout', ['nchw', 'cl'])
def test_residual(form, layout):
    has_u, has_scale, has_sample, scale_y = RESIDUAL_FORMS[form]
    shape = (2, 20, 4, 3)
    inputs = [_map(shape, layout, seed=1), _map(shape, layout, seed=2), _param((20,), seed=3),
              _map(shape, layout, seed=4) if has_u else None, _param((20,), seed=5) + 1 if has_scale else None]
    sample = torch.tensor([0.0, 1.25], device=DEVICE) if has_sample else None
    _check_op(lambda *t: ops.residual(*t, sample, scale_y), lambda *t: reference.residual(*t, sample, scale_y),
              inputs, what=form)


@pytest.mark.parametrize('dtype', HALF)
def test_residual_half(dtype):
    shape = (2, 20, 4, 3)
    inputs = [_map(shape, 'cl', dtype, seed=1), _map(shape, 'cl', dtype, seed=2), _param((20,), dtype, 3),
              _map(shape, 'cl', dtype, seed=4), _param((20,), dtype, 5) + 1]
    _check_op(lambda *t: ops.residual(*t, None, True), lambda *t: reference.residual(*t, None, True), inputs,
              dtype=dtype)


def test_opcheck_fake_tensors_and_autograd_registration():
    """torch.library's own check of each op: schema, fake (meta) implementation against the kernel's strides,
    autograd registration."""
    x = _map((2, 12, 3, 4), 'slice', seed=1)
    cases = [
        (ops.linear_attention, (_map((2, 24, 3, 4), 'cl', seed=2), x, 1, True)),
        (ops.token_mix, tuple(_mixer_inputs(4, 3, 4, False, 'cl'))),
        (ops.token_mix, tuple(_mixer_inputs(4, 3, 4, True, 'slice'))),
        (ops.bias_gelu, (x, _param((12,)))),
        (ops.residual, (x, _map((2, 12, 3, 4), 'cl', seed=3), _param((12,)), x, _param((12,), seed=1), None, True)),
    ]
    for op, args in cases:
        args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
        torch.library.opcheck(op, args, test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))


# ---------------------------------------------------------------------------------------- whole models

def _grads_and_output(model, x):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same drop-path draws on both paths
    out = model(x)
    out.float().square().mean().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_paths(model, x, dtype=torch.float32):
    model.set_kernels('torch')
    ref, ref_grads = _grads_and_output(model, x)
    model.set_kernels('triton')
    out, grads = _grads_and_output(model, x)
    _assert_close(out, ref, dtype, 'logits')
    # Gradients of parameters that the loss hardly reaches (biases before a BatchNorm, ~0) are compared
    # on the scale of the model's largest gradient.
    scale = max(g.abs().max().item() for g in ref_grads.values())
    worst = max((grads[n].float() - g.float()).abs().max().item() for n, g in ref_grads.items())
    assert sorted(grads) == sorted(ref_grads) and worst <= TOLERANCE[dtype] * scale, (worst, scale)


def test_tiny_model_triton_path_matches_torch_path():
    """Every fused op inside a (shallow) CARE-S0 in training, channels-last, with drop path. (Eval mode runs
    the same kernels without drop-path factors; tests/test_kernels.py checks the wiring in every mode.)"""
    torch.manual_seed(0)
    model = timm.create_model('care_s0', num_classes=5, depths=(1, 1, 1, 1), drop_path_rate=0.2).to(DEVICE)
    for block in model.modules():
        if getattr(block, 'layer_scale', None) is not None:
            block.layer_scale.data.uniform_(0.5, 1.5)  # a layer scale of 1e-6 would hide the branches' errors
    model.train()
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            # Batch statistics over the 2 values per channel that 2 images leave at stride 32 amplify
            # rounding differences a thousandfold; the kernels do not touch BatchNorm.
            bn.eval()
    x = torch.randn(2, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    _compare_paths(model, x)


@pytest.fixture
def no_tf32():
    """fp32 products in IEEE fp32 on CUDA (cuDNN allows TF32 by default), as the fp32 tolerance assumes."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@cuda_only
@pytest.mark.parametrize('name', ['care_s0', 'care_s1', 'care_s2'])
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_real_shapes_fp32(name, train, no_tf32):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.1, layer_scale_init_value=0.5).to(DEVICE)
    model = model.to(memory_format=torch.channels_last).train(train)
    _compare_paths(model, torch.randn(8, 3, 224, 224, device=DEVICE).contiguous(memory_format=torch.channels_last))


@cuda_only
@pytest.mark.parametrize('dtype', HALF)
def test_real_shapes_half_no_less_accurate_than_torch(dtype, no_tf32):
    """A half-precision CARE-S0 on the Triton path is as close to the fp32 model as on the PyTorch path."""
    torch.manual_seed(0)
    model = timm.create_model('care_s0', layer_scale_init_value=0.5).to(DEVICE).eval()
    x = torch.randn(8, 3, 224, 224, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model.set_kernels('torch')
        ref = model(x)
        model = model.to(dtype)
        torch_error = (model(x.to(dtype)).float() - ref).abs().max().item()
        model.set_kernels('triton')
        triton_error = (model(x.to(dtype)).float() - ref).abs().max().item()
    assert triton_error <= 1.25 * torch_error + 1e-3 * ref.abs().max().item(), (triton_error, torch_error)


@cuda_only
@pytest.mark.parametrize('name', ['care_s0', 'care_s1', 'care_s2'])
def test_released_fixture_logits_through_triton(released_checkpoint, name, no_tf32):
    """The authors' logits from a released-format checkpoint, un-fused and fused, on the Triton path."""
    from released import authors_logits

    expected = authors_logits(name)
    model = timm.create_model(name, pretrained=True, kernels='triton',
                              pretrained_cfg_overlay=dict(file=str(released_checkpoint(name)))).to(DEVICE).eval()
    with torch.no_grad():
        for m in (model, caretrans.reparameterize(model)):
            assert (m(expected['input'].to(DEVICE)).cpu() - expected['logits']).abs().max() < 1e-4
