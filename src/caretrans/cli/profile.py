"""`caretrans profile`: params and GMACs beside the paper's figures."""
import json


def add_parser(subparsers):
    p = subparsers.add_parser('profile', help='parameters and GMACs (fvcore) vs. the paper (Tables 2-5)')
    p.add_argument('-m', '--model', '--models', dest='models', nargs='+', default=['care_s0', 'care_s1', 'care_s2'],
                   metavar='MODEL', help='timm model names (default: %(default)s)')
    p.add_argument('--img-size', type=int, default=224, help='classifier input size (default 224)')
    p.add_argument('--backbone-img-size', type=int, default=512, help='backbone input size (default 512)')
    p.add_argument('--variants', action='store_true',
                   help="the ablation tables' rows instead (Tables 3-5, at 224x224), each beside the paper's figures")
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')
    p.set_defaults(func=run)


def _fmt(value, paper, digits):
    text = f'{value:.{digits}f}'
    return text if paper is None else f'{text} ({paper:.{digits}f})'


def _options(options: dict) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in options.items()) or 'released'


def run_variants(as_json: bool):
    from ..bench.profile import profile_ablations

    rows = profile_ablations()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print('ablation rows at 224x224; ours rounded to the paper\'s printed precision, then (paper) and our exact count')
    print(f'{"table":<8} {"model":<21} {"options":<24} {"params M":>24} {"GMACs":>22}  match')
    for r in rows:
        d = r['digits']
        params = f'{r["params_m"]:.{d}f} ({r["paper_params_m"]:.{d}f}) {r["params_m"]:.4f}'
        gmacs = f'{r["gmacs"]:.{d}f} ({r["paper_gmacs"]:.{d}f}) {r["gmacs"]:.4f}'
        print(f'{r["table"]:<8} {r["model"]:<21} {_options(r["options"]):<24} {params:>24} {gmacs:>22}  '
              f'{"yes" if r["matches"] else "NO"}')
    return 0


def run(args):
    from ..bench.profile import profile_model
    from .common import check_model_names

    if args.variants:
        return run_variants(args.json)
    check_model_names(args.models)
    rows = [profile_model(m, args.img_size, args.backbone_img_size) for m in args.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f'{"model":<10} {"params M (paper)":>18} {"GMACs@" + str(args.img_size) + " (paper)":>20} '
          f'{"backbone GMACs@" + str(args.backbone_img_size) + " (paper)":>30}')
    for r in rows:
        paper = r.get('paper', {})
        # The paper's figures are rounded: compare at its precision.
        p224 = paper.get('gmacs') if args.img_size == 224 else None
        p512 = paper.get('backbone_gmacs_512') if args.backbone_img_size == 512 else None
        print(f'{r["model"]:<10} {_fmt(r["params_m"], paper.get("params_m"), 2):>18} '
              f'{_fmt(r["gmacs"], p224, 2):>20} {_fmt(r["backbone_gmacs"], p512, 1):>30}')
    return 0
