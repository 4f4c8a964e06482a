"""Trainers: what each method adds to the one training loop (:mod:`.engine`).

Public contract: :class:`Trainer` (``setup``, ``training_step``, ``state_dict``/``load_state_dict``,
hooks), :class:`Batch`, :class:`TrainContext`; register with ``@TRAINERS.register("name")``.
"""

from .registry import TRAINERS
from .trainer import Batch, TrainContext, Trainer, as_trainer
from .engine import Engine, EngineSettings, TrainingError, split_trainer_config
from .plan import TrainingPlan, plan_training, validate_trainer_config
from . import ae, base, energy_oe, fcdd, hsc, logitnorm, npos, oe  # noqa: F401  (registration)
from . import vmdls as _vmdls  # noqa: F401  (registration: VMDLS)
from . import oaml as _oaml  # noqa: F401  (registration: OAML)
from . import eoe_bce as _eb, eoe_dsad as _ed, eoe_dsvdd as _ev, eoe_focal as _ef, eoe_hsc as _eh  # noqa: F401  (registration: EOE)
from . import eoe_clip as _eclip  # noqa: F401  (registration: EOE CLIP)

__all__ = ["TRAINERS", "Trainer", "Batch", "TrainContext", "Engine", "EngineSettings", "TrainingError",
           "TrainingPlan", "as_trainer", "plan_training", "split_trainer_config", "validate_trainer_config"]
