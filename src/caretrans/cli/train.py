"""`caretrans train`: the paper's recipe (or a preset / YAML), one process or many under torchrun."""
import contextlib
import json
import sys
import time


def add_parser(subparsers):
    from ..train.recipe import PRESETS, Recipe
    from .recipe_flags import add_training_flags

    p = subparsers.add_parser(
        'train', help="train a model: the paper's ImageNet recipe by default, presets for small data",
        description='Every recipe flag overrides the preset/YAML given with --recipe. '
                    'Under torchrun (`torchrun --nproc_per_node N -m caretrans train ...`) each process '
                    'takes --batch-size images per micro-step.')
    add_training_flags(p, PRESETS, Recipe(), 'imagenet', 'runs/MODEL-DATA')
    p.add_argument('--tensorboard', action='store_true', help='also log to RUN/tensorboard')
    p.set_defaults(func=run)


def build_recipe(args):
    """The recipe the command line asks for (recipe_flags.training_recipe with the classification presets)."""
    from ..train.recipe import load_recipe
    from .recipe_flags import resume_file, training_recipe

    return training_recipe(args, load_recipe, 'imagenet', resume_file(args.resume))


def run(args):
    from ..data.loader import check_auto_augment
    from ..runtime import run_exit_code
    from ..runtime.distributed import is_primary_process
    from ..runtime.loop import TrainingDiverged
    from ..train.recipe import load_recipe
    from ..train.report import summarize
    from ..train.trainer import train
    from .common import check_model_names
    from .recipe_flags import prepare_run

    recipe, run_dir, resume = prepare_run(args, load_recipe, 'imagenet')
    check_model_names([recipe.model] + ([recipe.teacher] if recipe.teacher else []))
    check_auto_augment(recipe.aa)
    primary = is_primary_process()

    def announce():  # the recipe, once everything it names was found and checked (stdout is JSON with --json)
        if not args.json:
            print(recipe.to_yaml(), end='', flush=True)

    start = time.perf_counter()
    try:  # with --json, stdout is the JSON alone: the run's lines go to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = train(recipe, run_dir, resume=resume, device=args.device, progress=args.progress,
                           tensorboard=args.tensorboard, announce=announce)
    except TrainingDiverged as e:
        print(f'caretrans train: error: {e}', file=sys.stderr)
        return 3
    minutes = (time.perf_counter() - start) / 60
    if result.status not in ('finished', 'already finished'):
        return run_exit_code(result.status)
    if not primary or result.status == 'already finished':
        return 0

    # The closing summary: params, GMACs, the last evaluation and its confusion matrix.
    figures = summarize(result.model.cpu(), result.img_size, result.in_chans, result.metrics, result.classes,
                        result.run_dir, minutes)
    figures.update(best_top1=result.best_top1, run_dir=str(result.run_dir))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f'{recipe.model}: {figures["params_m"]:.2f} M params, {figures["gmacs"]:.4f} GMACs at '
              f'{result.img_size}x{result.img_size}; {figures["test_images"]} validation images: '
              f'top-1 {figures["top1"]:.2f}%, top-5 {figures["top5"]:.2f}% after {recipe.epochs} epochs '
              f'in {minutes:.1f} min (train + eval)')
        print(f'run folder {result.run_dir}: last.pth, best.safetensors, recipe.yaml, metrics.csv, curves.png'
              + (', confusion.png' if 'confusion_png' in figures else ''))
    return 0
