"""Packaging: the core install (the models) works without the extras, and the command starts without torch."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

# The packages of the extras (pyproject.toml): none of them may be needed to create and load a model.
# (tqdm is in the train extra too, but huggingface_hub, which timm needs, always brings it.)
OPTIONAL = ('onnx', 'onnxruntime', 'onnxscript', 'matplotlib', 'fvcore', 'pycocotools', 'coremltools', 'openvino',
            'tensorboard')

# None in sys.modules is an absent package to the import system: `import onnx` raises ModuleNotFoundError and
# importlib.util.find_spec('onnx') answers None (torch asks it), as on a machine without the extras.
_WITHOUT_EXTRAS = """
import sys
sys.modules.update(dict.fromkeys({blocked}))
import caretrans, timm, torch
from caretrans.cli import main

model = timm.create_model('care_s0', num_classes=5).eval()
x = torch.randn(1, 3, 64, 64)
for name in ('w.safetensors', 'w.pth'):
    caretrans.save_atomic(model.state_dict(), sys.argv[1] + '/' + name)
    loaded = caretrans.load_checkpoint(timm.create_model('care_s0', num_classes=5), sys.argv[1] + '/' + name)
    assert torch.equal(loaded.eval()(x), model(x)), name
assert main(['profile', '--models', 'care_s0']) == 2  # an extra's command says which extra it needs
print('core ok')
"""


def test_core_install_needs_none_of_the_extras(tmp_path):
    done = subprocess.run([sys.executable, '-c', _WITHOUT_EXTRAS.format(blocked=set(OPTIONAL)), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'core ok'
    assert "fvcore is not installed; pip install 'caretrans[profile]'" in done.stderr


_HELP_WITHOUT_TORCH = """
import runpy, sys
for argv in (['--help'], ['train', '--help'], ['det', 'train', '--help'], ['bench', '--help'], ['export', '--help']):
    sys.argv = ['caretrans'] + argv
    try:
        runpy.run_module('caretrans_command', run_name='__main__', alter_sys=True)
    except SystemExit as e:
        assert e.code == 0, argv
print(sorted(m for m in ('torch', 'timm', 'torchvision', 'numpy') if m in sys.modules))
"""


def test_help_loads_no_torch():
    # The `caretrans` command's --help, in a fresh interpreter: what it imported is what a user waits for.
    scripts = tomllib.loads((Path(__file__).parents[1] / 'pyproject.toml').read_text())['project']['scripts']
    assert scripts == {'caretrans': 'caretrans_command:main'}
    done = subprocess.run([sys.executable, '-c', _HELP_WITHOUT_TORCH], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'usage: caretrans det train' in done.stdout and '--initial-checkpoint' in done.stdout
    assert done.stdout.strip().splitlines()[-1] == '[]'


def test_the_command_runs_and_python_m_caretrans_too():
    """A sub-command of the command registers the models it deferred; `python -m caretrans` (torchrun's way) runs
    the same command line."""
    for module in ('caretrans_command', 'caretrans'):
        done = subprocess.run([sys.executable, '-m', module, 'profile', '--models', 'care_s0', '--json'],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)[0]['model'] == 'care_s0', module


@pytest.mark.parametrize('code', [
    'import timm, caretrans',
    # An availability check of timm (importlib.util.find_spec) before the import must not lose the registration.
    "import caretrans, importlib.util; importlib.util.find_spec('timm'); from timm import list_models",
])
def test_import_caretrans_registers_the_models_with_timm_whenever_it_loads(code):
    check = f"{code}; import sys; print(sys.modules['timm'].list_models('care_s?'))"
    done = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['care_s0', 'care_s1', 'care_s2']"


def test_import_caretrans_registers_at_once_without_an_import_hook():
    check = ("import sys; finders = list(sys.meta_path); import caretrans; "
             "print('timm' in sys.modules, [type(f).__module__ for f in sys.meta_path if f not in finders])")
    done = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'True []'

