"""Training: recipes (YAML -> TrainConfig), the resumable loop, and norm comparisons."""

from proxynorm.train.config import RECIPES, TrainConfig, build_config
from proxynorm.train.loop import TrainingDiverged, train

__all__ = ["RECIPES", "TrainConfig", "TrainingDiverged", "build_config", "train"]
