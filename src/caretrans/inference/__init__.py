"""Using trained weights: a run's model, evaluation transform and labels (`load_run`), and top-k predictions
for image files (`predict_images`)."""
from .predict import Prediction, load_run, predict_images, run_task

__all__ = ['Prediction', 'load_run', 'predict_images', 'run_task']
