"""One command-line shape: the three training commands, the evaluation verbs and the model flags agree."""
import dataclasses
import functools
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from caretrans.cli import build_parser, main as cli_main
from caretrans.cli.recipe_flags import prepare_run
from caretrans.dense.recipe import DenseRecipe, load_recipe as load_dense_recipe
from caretrans.train.recipe import Recipe, load_recipe

TRAIN_COMMANDS = (['train'], ['det', 'train'], ['seg', 'train'])
RUN_FLAGS = ['--resume', 'r', '--output', 'o', '--device', 'cpu', '--threads', '1', '--no-progress', '--json']


def _parse(argv):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize('command', TRAIN_COMMANDS, ids=' '.join)
def test_training_commands_read_run_and_short_flags_alike(command):
    args = _parse(command + RUN_FLAGS + ['-b', '3', '-m', 'care_s1', '-j', '0', '--epochs', '2', '--amp'])
    assert (args.resume, args.output, args.device, args.threads, args.progress, args.json) == (
        'r', 'o', 'cpu', 1, False, True)
    assert (args.batch_size, args.model, args.workers, args.epochs, args.amp) == (3, 'care_s1', 0, 2, True)
    long = _parse(command + ['--batch-size', '3', '--model', 'care_s1', '--workers', '0', '--no-amp'])
    assert (long.batch_size, long.model, long.workers, long.amp) == (3, 'care_s1', 0, False)
    defaults = _parse(command)
    assert (defaults.resume, defaults.output, defaults.progress, defaults.json) == (None, None, True, False)
    # A recipe flag not given is absent, so that it cannot override the preset or YAML.
    assert not any(hasattr(defaults, name) for name in ('batch_size', 'model', 'workers', 'epochs', 'amp'))


def test_tuple_flags_take_as_many_values_as_the_tuple(capsys):
    assert _parse(['train', '--scale', '0.5', '1']).scale == [0.5, 1.0]
    assert _parse(['seg', 'train', '--ratio-range', '0.5', '2']).ratio_range == [0.5, 2.0]
    assert _parse(['det', 'train', '--proposals', '10', '20']).proposals == [10, 20]
    assert _parse(['det', 'train', '--mask-head-dims', '32']).mask_head_dims == [32]  # Tuple[int, ...]
    assert _parse(['det', 'train', '--decay-milestones', '3', '5', '7']).decay_milestones == [3, 5, 7]
    for argv in (['train', '--scale', '0.5'], ['det', 'train', '--proposals', '10']):
        with pytest.raises(SystemExit):
            _parse(argv)
        assert 'expected 2 arguments' in capsys.readouterr().err


def test_flags_given_override_the_preset_and_nothing_else(tmp_path):
    args = _parse(['seg', 'train', '--recipe', 'shapes-seg', '--data', str(tmp_path), '-b', '3',
                   '--ratio-range', '0.5', '1.5', '--no-reduce-zero-label', '--output', str(tmp_path / 'run')])
    recipe, run_dir, resume = prepare_run(args, functools.partial(load_dense_recipe, task='seg'), 'ade20k')
    assert recipe == dataclasses.replace(load_dense_recipe('shapes-seg'), data=str(tmp_path), batch_size=3,
                                         ratio_range=(0.5, 1.5), reduce_zero_label=False)
    assert (run_dir, resume) == (str(tmp_path / 'run'), None)
    args = _parse(['train', '--data', 'synthetic', '--lr', '0.01', '--scale', '0.5', '1'])
    recipe, _, _ = prepare_run(args, load_recipe, 'imagenet')
    assert recipe == Recipe(data='synthetic', lr=0.01, scale=(0.5, 1.0))


def _run_folder(path: Path, recipe) -> Path:
    """A run folder as training leaves it: last.pth (here a stand-in) and recipe.yaml."""
    path.mkdir(parents=True)
    (path / 'last.pth').write_bytes(b'')
    (path / 'recipe.yaml').write_text(__import__('yaml').safe_dump(recipe.to_dict(), sort_keys=False))
    return path


@pytest.fixture
def train_calls(monkeypatch):
    """The (recipe, run_dir, resume, device, progress) each training command passes to its task's train();
    the run 'stops on SIGTERM' at once."""
    calls = []

    def train(recipe, run_dir, resume=None, device=None, progress=True, **_):
        calls.append((recipe, str(run_dir), resume, device, progress))
        return SimpleNamespace(status='SIGTERM')

    monkeypatch.setattr('caretrans.train.trainer.train', train)
    monkeypatch.setattr('caretrans.dense.train.train', train)
    return calls


SAVED = {'train': Recipe(data='synthetic', epochs=3), 'seg': DenseRecipe(task='seg', data='shapes', epochs=3),
         'det': DenseRecipe(task='det', data='shapes', epochs=3)}


@pytest.mark.parametrize('command', TRAIN_COMMANDS, ids=' '.join)
def test_resume_takes_a_run_folder_or_its_last_pth_with_the_runs_recipe(tmp_path, train_calls, command):
    saved = SAVED[command[0]]
    run = _run_folder(tmp_path / 'run', saved)
    last = str(run / 'last.pth')
    for given in (run, run / 'last.pth'):
        assert cli_main(command + ['--resume', str(given), '--device', 'cpu', '--no-progress']) == 143
    # --output writes the continued run elsewhere; a flag given changes the recipe (train() decides whether
    # the change is allowed).
    assert cli_main(command + ['--resume', str(run), '--output', 'x', '--epochs', '4']) == 143
    assert train_calls == [(saved, str(run), last, 'cpu', False)] * 2 + [
        (dataclasses.replace(saved, epochs=4), 'x', last, None, True)]


@pytest.mark.parametrize('command', TRAIN_COMMANDS, ids=' '.join)
def test_a_diverged_run_exits_3_from_every_training_command(tmp_path, monkeypatch, capsys, command):
    from caretrans.runtime.loop import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged('loss is nan at epoch 1, batch 2')

    monkeypatch.setattr('caretrans.train.trainer.train', diverge)
    monkeypatch.setattr('caretrans.dense.train.train', diverge)
    assert cli_main(command + ['--data', str(tmp_path), '--output', str(tmp_path / 'run')]) == 3
    assert f'caretrans {command[0]}: error: loss is nan at epoch 1, batch 2' in capsys.readouterr().err


@pytest.mark.parametrize('command', TRAIN_COMMANDS, ids=' '.join)
def test_resume_of_nothing_and_a_new_run_over_a_run_are_refused_alike(tmp_path, capsys, train_calls, command):
    assert cli_main(command + ['--data', str(tmp_path), '--resume', str(tmp_path / 'gone')]) == 2
    assert f'--resume {tmp_path / "gone"}: {tmp_path / "gone"} does not exist' in capsys.readouterr().err
    run = _run_folder(tmp_path / 'run', SAVED[command[0]])
    assert cli_main(command + ['--data', str(tmp_path), '--output', str(run)]) == 2
    assert f'{run} already holds a run; continue it with --resume {run}' in capsys.readouterr().err
    assert train_calls == []


@pytest.mark.parametrize('command,folder', [(['train'], 'care_s0-shapes'), (['det', 'train'], 'det-care_s0-shapes'),
                                            (['seg', 'train'], 'seg-care_s1-shapes')], ids=['train', 'det', 'seg'])
def test_output_defaults_to_a_folder_under_runs(tmp_path, monkeypatch, train_calls, command, folder):
    monkeypatch.chdir(tmp_path)
    assert cli_main(command + ['--data', 'data/shapes/'] + (['-m', 'care_s1'] if command[0] == 'seg' else [])) == 143
    assert train_calls[0][1] == os.path.join('runs', folder)


@pytest.mark.parametrize('command,needed', [(['train'], "'fashion-mnist', 'synthetic' or a folder"),
                                            (['det', 'train'], 'det: COCO root'), (['seg', 'train'], 'det: COCO root')])
def test_data_is_required_by_every_training_command(tmp_path, capsys, command, needed):
    assert cli_main(command + ['--output', str(tmp_path / 'run')]) == 2
    assert f'--data is required: {needed}' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_help_shows_the_default_presets_values(capsys):
    for argv, shown in ((['train'], '(imagenet: 300)'), (['det', 'train'], '(coco: 12)'), (['seg', 'train'], '(ade20k: 95)')):
        with pytest.raises(SystemExit):
            _parse(argv + ['--help'])
        text = ' '.join(capsys.readouterr().out.split())
        assert re.search(r'--epochs EPOCHS ' + re.escape(shown), text), text


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_evaluation_verbs_agree_with_validate(task):
    flags = ['--checkpoint', 'c.pth', '--data', 'd', '--device', 'cpu', '--json', '-b', '4', '-j', '0']
    classification = _parse(['validate'] + flags)
    for verb in ('validate', 'eval'):  # eval: the former name, kept as an alias
        dense = _parse([task, verb] + flags + ['--split', 's'])
        assert dense.func is _parse([task, 'validate', '--checkpoint', 'c']).func
        for name in ('checkpoint', 'data', 'device', 'json', 'batch_size', 'workers'):
            assert getattr(dense, name) == getattr(classification, name), name
        assert dense.split == _parse([task, verb, '--checkpoint', 'c', '--val-split', 's']).split == 's'


@pytest.mark.parametrize('command', ['bench', 'profile'])
def test_model_flags_agree_across_export_bench_and_profile(command, capsys):
    names = ['care_s0', 'care_s1']
    for flag in ('-m', '--model', '--models'):  # --models: the former spelling, kept as an alias
        assert _parse([command, flag] + names).models == names
    assert _parse(['export', '-m', 'care_s1', '--format', 'onnx', '--output', 'x']).model == 'care_s1'
    assert cli_main([command, '--model', 'care_s9']) == 2
    assert "unknown model 'care_s9'" in capsys.readouterr().err
