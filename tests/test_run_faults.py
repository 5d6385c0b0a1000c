"""Faults around a run: its folder, a second run on it, a full disk, a checkpoint changed on disk,
signals to the whole process group, an evaluation that fails, and resuming from elsewhere."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import caretrans  # noqa: F401  (registers the models)
from caretrans.cli import main
from caretrans.models.checkpoint import CheckpointError, read_checkpoint, save_atomic, save_weights
from caretrans.runtime.folder import LOCK_FILE, RunFolder, RunFolderError
from caretrans.runtime.state import load_training_state
from caretrans.train.recipe import Recipe
from caretrans.train.trainer import train

TINY = dict(data='synthetic', img_size=32, batch_size=16, workers=0, epochs=2, warmup_epochs=0, lr=2e-3,
            drop_path=0.0, scale=(0.5, 1.0), aa=None, color_jitter=0.0, reprob=0.0, mixup=0.0, cutmix=0.0)


def _cli(*args, entry='caretrans') -> list:
    return [sys.executable, '-m', entry, *args]


# The run folder ---------------------------------------------------------------------------------------------

def test_an_output_below_a_file_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    code = main(['train', '--data', str(tmp_path / 'no-such-data-is-read'), '--output', str(tmp_path / 'file' / 'sub'),
                 '--no-progress'])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1, err
    assert 'a part of that path is a file' in err


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_output_is_refused(tmp_path):
    folder = tmp_path / 'ro'
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(RunFolderError, match='cannot be written'):
            RunFolder(folder / 'run').__enter__()
    finally:
        folder.chmod(0o755)


_HOLD = """
import sys, time
from caretrans.runtime.folder import RunFolder
with RunFolder(sys.argv[1]):
    print('locked', flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(tmp_path / 'run')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(RunFolderError, match=f'in use by another run \\(pid {holder.pid}\\)'):
            with RunFolder(tmp_path / 'run'):
                pass
        with pytest.raises(RunFolderError):  # the train command refuses before it reads any data
            train(Recipe(**TINY), tmp_path / 'run', progress=False)
    finally:
        holder.kill()
        holder.wait()
    # The lock went with its process: the file it left is stale and taken over.
    assert (tmp_path / 'run' / LOCK_FILE).read_text().strip() == str(holder.pid)
    with RunFolder(tmp_path / 'run'):
        assert (tmp_path / 'run' / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert (tmp_path / 'run' / LOCK_FILE).read_text() == ''  # released on exit


def test_a_refused_run_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match='too few'):
        train(Recipe(**dict(TINY, num_classes=3)), tmp_path / 'run', progress=False)
    assert not (tmp_path / 'run').exists()


# Writing checkpoints ------------------------------------------------------------------------------------------

def test_a_full_disk_is_named_with_the_room_needed_and_the_last_checkpoint_kept(tmp_path, monkeypatch):
    state = {'model': torch.zeros(1_000_000)}
    save_atomic(state, tmp_path / 'last.pth')
    good = (tmp_path / 'last.pth').read_bytes()

    def no_space(obj, f, *args, **kwargs):  # what torch.save raises when the disk fills mid-write
        Path(f).write_bytes(b'PK' + b'\0' * 100)
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 4288 vs 4196')

    monkeypatch.setattr(torch, 'save', no_space)
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10 * 2 ** 20, 10 * 2 ** 20, 10_000))
    with pytest.raises(CheckpointError) as raised:
        save_atomic({'model': torch.ones(1_000_000)}, tmp_path / 'last.pth')
    assert str(raised.value) == (f'no space left on {tmp_path} to write last.pth (need ~4 MB, 0 MB free); '
                                 f'{tmp_path / "last.pth"} is unchanged')
    assert (tmp_path / 'last.pth').read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth']  # no temp file left


def test_an_enospc_from_any_writer_is_named(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr('safetensors.torch.save_file', full)
    with pytest.raises(CheckpointError, match=f'no space left on {tmp_path} to write best.safetensors'):
        save_weights(torch.nn.Linear(4, 2), tmp_path / 'best.safetensors')


def _data_offset(path: Path) -> int:
    """Where the bytes of the largest tensor of a torch.save archive start."""
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda e: e.file_size)
    with open(path, 'rb') as f:
        f.seek(entry.header_offset + 26)
        name_length, extra_length = np.frombuffer(f.read(4), dtype='<u2')
    return entry.header_offset + 30 + int(name_length) + int(extra_length) + entry.file_size // 2


def _overwrite(path: Path, offset: int, data: bytes):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


def test_bytes_changed_in_place_are_found_on_load_and_resume(tmp_path, capsys):
    train(Recipe(**dict(TINY, epochs=1)), tmp_path / 'run', progress=False)
    last, best = tmp_path / 'run' / 'last.pth', tmp_path / 'run' / 'best.safetensors'
    size = last.stat().st_size
    _overwrite(last, _data_offset(last), b'\x7f' * 64)
    _overwrite(best, best.stat().st_size // 2, b'\x7f' * 64)
    assert last.stat().st_size == size
    for path in (last, best):
        with pytest.raises(CheckpointError, match=f'{path} is corrupt: its tensors no longer match'):
            read_checkpoint(path)
    capsys.readouterr()
    assert main(['train', '--resume', str(tmp_path / 'run'), '--epochs', '2', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'is corrupt' in err and 'last good checkpoint' not in err


# Signals --------------------------------------------------------------------------------------------------------

def _start_in_own_group(args, cwd=None, entry='caretrans'):
    return subprocess.Popen(_cli(*args, entry=entry), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS='1'))


def _wait_until_it_catches(proc, signum, timeout=240):
    """Wait until the process `proc` has a handler for `signum` (Linux's /proc/PID/status, SigCgt)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        status = Path(f'/proc/{proc.pid}/status').read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith('SigCgt:')), 16)
        if caught >> (signum - 1) & 1:
            return
        time.sleep(0.01)
    raise AssertionError(f'the process never caught {signal.Signals(signum).name}: {proc.communicate()}')


@pytest.mark.xdist_group('processes')
def test_two_ctrl_c_to_the_process_group_end_training_quietly_after_saving(tmp_path):
    run = tmp_path / 'run'
    proc = _start_in_own_group(['train', '--data', 'synthetic', '--img-size', '32', '-b', '16', '-j', '2',
                                '--epochs', '50', '--warmup-epochs', '0', '--aa', 'none', '--mixup', '0',
                                '--cutmix', '0', '--output', str(run), '--no-progress', '--threads', '1'])
    deadline = time.monotonic() + 240
    while not (run / 'last.pth').exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the trainer and its loader workers
    time.sleep(0.15)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert 'Traceback' not in err and 'Error' not in err, err
    assert 'stopped by SIGINT' in out
    state = load_training_state(run / 'last.pth')
    assert state['epoch'] >= 1


@pytest.mark.xdist_group('processes')
def test_ctrl_c_to_validate_ends_it_quietly(tmp_path):
    model = timm.create_model('care_s0', num_classes=10)
    save_weights(model, tmp_path / 'w.safetensors', model_name='care_s0')
    proc = _start_in_own_group(['validate', '--checkpoint', str(tmp_path / 'w.safetensors'), '--data', 'synthetic',
                                '-b', '1', '-j', '2', '--img-size', '224'], entry='caretrans_command')
    # Not a fixed sleep: on a loaded machine importing torch alone can outlast it. The command catches SIGTERM
    # only once its handlers are in place (Python itself catches SIGINT from the start).
    _wait_until_it_catches(proc, signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == 'caretrans validate: interrupted' and 'Traceback' not in err, err


# Evaluation after the save, resume from anywhere -----------------------------------------------------------------

def test_an_epoch_is_saved_before_its_evaluation_and_a_resume_evaluates_it_first(tmp_path, monkeypatch):
    from caretrans.train import trainer

    real = trainer.evaluate

    def failing(*args, **kwargs):
        raise OSError('the evaluation data went away')

    monkeypatch.setattr(trainer, 'evaluate', failing)
    with pytest.raises(OSError):
        train(Recipe(**TINY), tmp_path / 'run', progress=False)
    state = load_training_state(tmp_path / 'run' / 'last.pth')
    assert (state['epoch'], state['evaluated']) == (1, False)  # the trained epoch is kept

    monkeypatch.setattr(trainer, 'evaluate', real)
    result = train(Recipe(**TINY), tmp_path / 'run', resume=str(tmp_path / 'run' / 'last.pth'), progress=False)
    records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [1, 2] and all('val_top1' in r for r in records)
    assert result.status == 'finished' and (tmp_path / 'run' / 'best.safetensors').is_file()


def _image_folder(root: Path, classes=('cat', 'dog'), per_class: int = 8):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                pixels = rng.integers(0, 60, (40, 40, 3)) + 150 * i
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f'{j}.png')
    return root


def test_a_run_resumes_from_any_working_directory_and_after_its_data_moved(tmp_path):
    work, elsewhere = tmp_path / 'work', tmp_path / 'elsewhere'
    work.mkdir()
    elsewhere.mkdir()
    _image_folder(work / 'pets')
    first = subprocess.run(_cli('train', '--data', 'pets', '--img-size', '32', '-b', '8', '-j', '0', '--epochs', '1',
                                '--warmup-epochs', '0', '--aa', 'none', '--mixup', '0', '--cutmix', '0',
                                '--output', 'run', '--no-progress'), cwd=work, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert f'data: {work / "pets"}' in (work / 'run' / 'recipe.yaml').read_text()  # recorded absolute

    again = subprocess.run(_cli('train', '--resume', str(work / 'run'), '--epochs', '2', '--no-progress'),
                           cwd=elsewhere, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert load_training_state(work / 'run' / 'last.pth')['epoch'] == 2

    shutil.move(work / 'pets', elsewhere / 'pets')  # the data moved: the run continues when told where
    moved = subprocess.run(_cli('train', '--resume', str(work / 'run'), '--epochs', '3', '--data', 'pets',
                                '--no-progress'), cwd=elsewhere, capture_output=True, text=True)
    assert moved.returncode == 0, moved.stderr
    assert f'data: {elsewhere / "pets"}' in (work / 'run' / 'recipe.yaml').read_text()
    assert load_training_state(work / 'run' / 'last.pth')['epoch'] == 3


# Small data --------------------------------------------------------------------------------------------------------

def test_a_teacher_needs_its_weights(tmp_path, capsys):
    assert main(['train', '--data', 'synthetic', '--teacher', 'resnet18', '--output', str(tmp_path / 'r')]) == 2
    assert 'needs its weights' in capsys.readouterr().err
    assert not (tmp_path / 'r').exists()


def test_a_schedule_that_never_leaves_warm_up_is_warned_about(tmp_path, capsys):
    train(Recipe(**dict(TINY, epochs=1, warmup_epochs=5)), tmp_path / 'run', progress=False)
    assert 'never leaves its warm-up (5 warm-up epochs of 1)' in capsys.readouterr().err


def test_train_json_prints_only_json(tmp_path, capsys):
    flags = ['--data', 'synthetic', '--img-size', '32', '-b', '16', '-j', '0', '--epochs', '1', '--warmup-epochs', '0',
             '--aa', 'none', '--mixup', '0', '--cutmix', '0']
    assert main(['train', *flags, '--output', str(tmp_path / 'run'), '--no-progress', '--json']) == 0
    captured = capsys.readouterr()
    figures = json.loads(captured.out)  # the progress lines went to stderr
    assert figures['run_dir'] == str(tmp_path / 'run') and 'epoch 1/1' in captured.err
