"""Supervised fine-tuning on OpenCharacter dialogues (TRL SFTTrainer + PEFT), answers-only loss.

    from opencharacter.train import TrainConfig, train
    result = train(TrainConfig(data=["runs/example"], base_model="gemma3-270m", out="models/demo"))

Heavy libraries (torch, transformers, trl, peft, datasets) are imported only when training runs,
so the CLI stays quick to start.
"""

from opencharacter.train.config import TrainConfig, TrainError
from opencharacter.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "train"]
