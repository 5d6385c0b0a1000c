"""`caretrans det train|validate|predict|synth`: Mask R-CNN with a CARE backbone on COCO-format data."""


def add_parser(subparsers):
    from .dense import add_task_parser
    add_task_parser(subparsers, 'det', 'object detection and instance segmentation (Mask R-CNN, COCO AP)')
