"""Using trained weights: a run's model, evaluation transform and labels (`load_run`), and top-k predictions
for image files (`predict_images`)."""
from .predict import Prediction, find_images, load_run, predict_images, run_weights

__all__ = ['Prediction', 'find_images', 'load_run', 'predict_images', 'run_weights']
