"""The TRAINERS registry. Every entry must have ``training_step``; the other methods of the contract get
defaults (:func:`openood_ext.trainers.trainer.as_trainer`)."""

from ..registry import Registry

TRAINERS = Registry("trainers", required=("training_step",), home="openood_ext.trainers")
