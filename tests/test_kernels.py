"""The kernels= option and the fused ops' plumbing on the CPU: dispatch, autograd, torch.compile, export paths.

On the CPU the ops run their PyTorch references, so the model on kernels='triton' must compute
what kernels='torch' computes, exactly; the Triton kernels themselves are checked by
tests/test_triton_kernels.py, which the last test here runs under Triton's interpreter.
"""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

import caretrans
from caretrans.kernels import TRITON_INSTALLED, ForwardPath, dispatch, ops

FUSED_OPS = {'linear_attention', 'token_mix', 'bias_gelu', 'residual'}


def _model(name='care_s0', **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs)
    for block in model.modules():
        if getattr(block, 'layer_scale', None) is not None:
            block.layer_scale.data.uniform_(0.5, 1.5)  # the branches must count
    return model


def _ops_called(monkeypatch, model, x, backward=False):
    """Names of the fused ops (caretrans.kernels.ops) that model(x) and its backward call."""
    called = set()

    def counting(name, op):
        def call(*args):
            called.add(name)
            return op(*args)
        return call

    with monkeypatch.context() as patch:
        for name in FUSED_OPS | {f'{n}_backward' for n in FUSED_OPS}:
            patch.setattr(ops, name, counting(name, getattr(ops, name)))
        out = model(x)
        if backward:
            out.sum().backward()
    return called


def test_kernels_option():
    model = _model(depths=(1, 1, 1, 1))
    assert model.kernels == 'auto' and model.stages[2].blocks[0].token_mixer.global_mixer.kernels == 'auto'
    model.set_kernels('torch')
    assert {m.kernels for m in model.modules() if hasattr(m, 'kernels')} == {'torch'}
    assert _model(depths=(1, 1, 1, 1), kernels='triton').stages[0].blocks[0].inter1.kernels == 'triton'
    with pytest.raises(ValueError, match="kernels must be one of 'auto', 'triton', 'torch', got 'cuda'"):
        model.set_kernels('cuda')


def test_auto_and_torch_run_pytorch_on_cpu_and_triton_runs_the_fused_ops(monkeypatch):
    model = _model(depths=(1, 1, 1, 2)).train()
    x = torch.randn(2, 3, 64, 64)
    assert _ops_called(monkeypatch, model, x, backward=True) == set()  # auto on the CPU
    model.set_kernels('triton')
    assert _ops_called(monkeypatch, model, x, backward=True) == FUSED_OPS | {f'{n}_backward' for n in FUSED_OPS}
    model.set_kernels('torch')
    assert _ops_called(monkeypatch, model, x) == set()
    assert dispatch('auto', x) == ForwardPath.TORCH and dispatch('triton', x) == ForwardPath.TRITON


def test_auto_leaves_cuda_to_pytorch_under_deterministic_algorithms():
    """The kernels' channel gradients are summed with atomics, in an order that varies from run to run."""
    cuda_tensor = SimpleNamespace(is_cuda=True, stride=lambda dim: 7)  # an NCHW map on CUDA, to dispatch
    assert (dispatch('auto', cuda_tensor) == ForwardPath.TRITON) is TRITON_INSTALLED
    torch.use_deterministic_algorithms(True)
    try:
        assert dispatch('auto', cuda_tensor) == ForwardPath.TORCH
        assert dispatch('triton', cuda_tensor) == ForwardPath.TRITON
    finally:
        torch.use_deterministic_algorithms(False)


class _Recorder(torch.nn.Module):
    """Records in `paths` the path dispatch gives each forward (in kernels=`mode`)."""

    def __init__(self, mode, paths):
        super().__init__()
        self.mode = mode
        self.record = paths.add  # not a module attribute of its own: torch.export restores those

    def forward(self, x):
        self.record(dispatch(self.mode, x))
        return x + 1


@pytest.mark.parametrize('mode', ['auto', 'triton', 'torch'])
def test_dispatch_names_the_path_of_every_way_a_model_runs(mode):
    """One function decides: graph capture for export never sees the fused ops or the fast paths, torch.compile
    keeps the fused ops only, eager PyTorch takes the channels-last fast path on channels-last maps."""
    fused = mode == 'triton'  # on the CPU, 'auto' is PyTorch
    x = torch.randn(2, 3, 8, 8)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    paths = {}
    for name, run in (
            ('eager', lambda m: m(x)),
            ('eager channels-last', lambda m: m(x_cl)),
            ('jit.trace', lambda m: torch.jit.trace(m, x, check_trace=False)),
            ('fx', lambda m: torch.fx.symbolic_trace(m)),
            ('export', lambda m: torch.export.export(m, (x,))),
            ('compile', lambda m: torch.compile(m, backend='eager', fullgraph=True)(x_cl))):
        torch._dynamo.reset()
        paths[name] = set()
        run(_Recorder(mode, paths[name]))
    torch._dynamo.reset()
    assert paths == {
        'eager': {ForwardPath.TRITON if fused else ForwardPath.TORCH},
        'eager channels-last': {ForwardPath.TRITON if fused else ForwardPath.CHANNELS_LAST},
        'jit.trace': {ForwardPath.EXPORT}, 'fx': {ForwardPath.EXPORT}, 'export': {ForwardPath.EXPORT},
        'compile': {ForwardPath.TRITON if fused else ForwardPath.COMPILE},
    }
    scripted = torch.jit.script(caretrans.kernels.paths.dispatch)
    assert scripted(mode, x_cl) == ForwardPath.EXPORT


def _outputs_and_grads(model, x, run=None):
    """model's output on x (run by `run`, e.g. its compiled form) and its parameters' gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same drop-path draws on both paths
    out = (run if run is not None else model)(x)
    out.square().sum().backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('mode', ['train', 'eval', 'fused'])
@pytest.mark.parametrize('layout', ['nchw', 'channels-last'])
def test_fused_path_computes_the_pytorch_path(mode, layout):
    """Every op, its autograd formula and the modules' wiring (drop path, re-parameterised blocks, the last
    block's plain Inter2) on the ops' CPU references: outputs and gradients equal the PyTorch path's."""
    model = _model(depths=(1, 1, 2, 2), drop_path_rate=0.2)
    model.train(mode == 'train')
    if mode == 'fused':
        caretrans.reparameterize(model)
    x = torch.randn(2, 3, 64, 64)
    if layout == 'channels-last':
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.set_kernels('torch')
    ref, ref_grads = _outputs_and_grads(model, x)
    model.set_kernels('triton')
    out, grads = _outputs_and_grads(model, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_ops_compile_fullgraph_with_dynamic_batch():
    """torch.compile sees each fused op (and its backward) as one node: one graph, no breaks, in training and
    fused inference, and a dynamic batch dimension (aot_eager: fake tensors and autograd, no code generation)."""
    torch._dynamo.reset()
    fused = caretrans.reparameterize(_model(depths=(1, 1, 1, 1), kernels='triton'))
    explain = torch._dynamo.explain(fused)(torch.randn(2, 3, 32, 32))
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    targets = {str(n.target) for g in explain.graphs for n in g.graph.nodes if n.op == 'call_function'}
    assert {f'caretrans.{n}.default' for n in FUSED_OPS} <= targets
    torch._dynamo.reset()
    model = _model(depths=(1, 1, 1, 1), kernels='triton').train()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=True)  # fails on a graph break
    for batch in (2, 3):
        x = torch.randn(batch, 3, 32, 32)
        model.set_kernels('torch')
        ref, ref_grads = _outputs_and_grads(model, x)
        model.set_kernels('triton')
        out, grads = _outputs_and_grads(model, x, compiled)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for name, grad in ref_grads.items():  # float32 rounding, relative to the gradient's own scale
            atol = 1e-5 + 4e-6 * grad.abs().max().item()
            torch.testing.assert_close(grads[name], grad, atol=atol, rtol=1e-4, msg=name)


def test_graph_capture_for_export_takes_the_pytorch_path():
    """torch.jit.trace, torch.fx and torch.export must hold plain ops that exporters and runtimes know."""
    model = caretrans.reparameterize(_model(depths=(1, 1, 1, 1), kernels='triton'))
    x = torch.randn(1, 3, 32, 32)
    traced = torch.jit.trace(model, x)
    assert 'caretrans::' not in str(traced.inlined_graph)
    exported = torch.export.export(model, (x,))
    assert 'caretrans' not in str(exported.graph)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.skipif(not TRITON_INSTALLED, reason='triton is not installed')
@pytest.mark.skipif(torch.cuda.is_available(), reason='with CUDA, tests/test_triton_kernels.py runs the kernels there')
@pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') == '1', reason='this process already interprets')
def test_triton_kernels_under_the_interpreter():
    """tests/test_triton_kernels.py on the CPU through Triton's interpreter, which must be on before triton is
    imported: a process of its own, so this process and its other tests keep compiled Triton."""
    tests = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET='1')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', '-rN',
         str(tests / 'test_triton_kernels.py')],
        cwd=tests.parent, env=env, capture_output=True, text=True, timeout=900)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0 and ' passed' in result.stdout, report


@pytest.mark.skipif(not TRITON_INSTALLED, reason='triton is not installed')
@pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') == '1', reason='the interpreter compiles nothing')
@pytest.mark.skipif(torch.cuda.is_available(), reason='with CUDA, tests/test_triton_kernels.py compiles and runs them')
def test_kernels_compile_for_hopper(monkeypatch):
    """Every kernel, as the model launches it (fp32 and bf16, channels-last), compiles to a cubin for sm_90
    without a GPU: what the interpreter cannot check (e.g. globals that are not tl.constexpr)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from caretrans.kernels import attention, depthwise, epilogue

    pointer = {torch.float32: '*fp32', torch.float16: '*fp16', torch.bfloat16: '*bf16'}
    compiled = set()

    def compile_launch(kernel, args, kwargs):
        values = dict(zip(kernel.arg_names, args), **kwargs)
        signature, constants = {}, {}
        for p in kernel.params:
            v = values[p.name]
            if p.is_constexpr:
                signature[p.name], constants[p.name] = 'constexpr', v
            else:
                signature[p.name] = pointer[v.dtype] if isinstance(v, torch.Tensor) else \
                    'fp32' if isinstance(v, float) else 'i32'
        binary = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget('cuda', 90, 32))
        assert binary.asm['cubin']
        compiled.add(kernel.__name__)

    monkeypatch.setattr(JITFunction, '__getitem__', lambda kernel, grid: lambda *a, **k: compile_launch(kernel, a, k))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 48, 7, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)
        g, y, b, s = x[:, :16], x[:, 16:], torch.randn(32), torch.rand(32)
        attention.forward(x[:, :32], g, 1, True, torch.empty_like(g))
        attention.backward(g, x[:, :32], g, 1, True, torch.empty_like(x[:, :32]), torch.empty_like(g))
        epilogue.bias_gelu_forward(y, b, torch.empty_like(y))
        epilogue.bias_gelu_backward(y, y, b, torch.empty_like(y))
        epilogue.residual_forward(y, y, b, y, s, s[:2], True, torch.empty_like(y))
        epilogue.residual_backward(y, y, b, y, s, None, False, torch.empty_like(y), torch.empty_like(y))
        weights = [torch.randn(16, 1, 3, 3), b[:16], torch.randn(16, 1, 7, 7), b[:16],
                   torch.randn(16, 1, 11, 1), b[:16], torch.randn(16, 1, 1, 11), b[:16]]
        depthwise.mix(x, None, *weights, torch.empty_like(x))
        depthwise.mix(y, g, *weights[:4], None, None, None, None, torch.empty_like(x))
        depthwise.input_grad(x, *weights[0:8:2], False, torch.empty_like(x))
        depthwise.weight_grads(x, y, weights[0], weights[2], None, None, True)
    assert compiled == {'_forward_kernel', '_backward_kernel', '_bias_gelu_forward_kernel',
                        '_bias_gelu_backward_kernel', '_residual_forward_kernel', '_residual_backward_kernel',
                        '_mix_kernel', '_weight_grad_kernel'}


@pytest.mark.parametrize('name', ['care_s2_sym', 'care_s0_no_inter1', 'care_s0_no_memory', 'care_s0_single_local'])
def test_ablation_layouts_keep_the_pytorch_path_under_triton(name):
    """The fused ops implement the released block layout only: other layouts must not enter them."""
    torch.manual_seed(0)
    ref = timm.create_model(name, kernels='torch').eval()
    fused = timm.create_model(name, kernels='triton').eval()
    fused.load_state_dict(ref.state_dict())
    blocks = [b for s in fused.stages for b in s.blocks]
    assert all(b.kernels == 'torch' for b in blocks)  # no ablation block is fused whole
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)
