"""`caretrans seg train|validate|predict|synth`: Semantic FPN with a CARE backbone on ADE20K-format data."""


def add_parser(subparsers):
    from .dense import add_task_parser
    add_task_parser(subparsers, 'seg', 'semantic segmentation (Semantic FPN, mIoU)')
