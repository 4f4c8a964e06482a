"""EOE's CLIP anomaly detectors (``liznerski/eoe`` ``src/eoe/training/clip.py``) on the ``ad`` pipeline, with the
``clip`` network (:mod:`openood_ext.networks.clip`).

Prompts (class names from the benchmark, verbatim, underscores included):
one-vs-rest ``["a photo of a {c}", "a photo of something"]``; leave-one-out one ``"a photo of a {c'}"`` per
normal class c' followed by ``"a photo of something"`` (the anomaly prompt is always last). Text embeddings
are computed once in ``setup`` (no gradient) and L2-normalised.

Score (higher = more anomalous): p = softmax(``temperature`` * cos(image, prompts)) over all prompts
(temperature 100), score = p[last], the probability of the anomaly prompt.

``eoe_clip_zero_shot`` needs no training (``trains = False``: the ``ad`` pipeline sets it up and scores;
EOE runs this as ``-e 0``). ``eoe_clip`` fine-tunes with OE (EOE's "CLIP+OE"): batches of B normals + B OE
images, per-sample loss -log p[anomaly] for OE images and -max over the normal prompts of log p for normals
(one-vs-rest: prompt 0), mean over the 2B batch; only the image tower and its projection are optimised (EOE
hands the whole model to SGD, but the text features are computed once, so only the image path gets
gradients; weight decay on the unused text tower would change nothing the scores use). EOE's recipe:
SGD Nesterov, momentum 0.9, weight decay 1e-3, lr 2e-5 (CIFAR-10) / 1e-4 (ImageNet), 80 epochs, x0.1 at
50/60/70/75, batch 128, full OE (``configs/trainers/eoe_clip_oe_cifar10.yml``).

Images arrive normalised by the benchmark; they are mapped back to [0, 1] (the benchmark's mean/std) and
the network applies CLIP's own preprocessing.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..schema import PositiveFloat
from ..synthesizers.pixels import PixelSpace
from .registry import TRAINERS
from .trainer import Trainer

TEMPLATE = "a photo of a {}"
ANOMALY_PROMPT = "a photo of something"


def clip_prompts(normal_names: list[str], template: str = TEMPLATE, anomaly: str = ANOMALY_PROMPT) -> list[str]:
    """One prompt per normal class, then the anomaly prompt (last)."""
    return [template.format(c) for c in normal_names] + [anomaly]


def clip_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """temperature * cosine similarity [B, P] of image embeddings [B, D] and prompt embeddings [P, D]."""
    return temperature * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def clip_anomaly_score(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """softmax over the prompts, probability of the last (anomaly) prompt [B]."""
    return clip_logits(image_emb, text_emb, temperature).softmax(-1)[:, -1]


def clip_oe_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 100.0) -> torch.Tensor:
    """EOE's CLIP+OE loss: mean of -log p[anomaly] (labels 1) and -max_normal-prompts log p (labels 0)."""
    logp = clip_logits(image_emb, text_emb, temperature).log_softmax(-1)
    return -torch.where(labels.bool(), logp[:, -1], logp[:, :-1].max(-1).values).mean()


def normal_class_names(bench, class_names: list[str] | None = None) -> list[str]:
    """The names of ``bench``'s normal classes: ``class_names`` (every label's name, in label order) if given,
    else the benchmark's ``class_names``; folder benchmarks (``normal`` a name) use the folder name."""
    normal = getattr(bench, "normal", None)
    if isinstance(normal, str):
        return [normal]
    names = class_names if class_names is not None else getattr(bench, "class_names", None)
    if normal is None or names is None:
        raise ConfigError(f"trainer.class_names: benchmark {getattr(bench, 'name', '?')} names no classes; give "
                          f"trainer.class_names: [name of label 0, name of label 1, ...]")
    normal = [normal] if isinstance(normal, int) else list(normal)
    if max(normal) >= len(names):
        raise ConfigError(f"trainer.class_names: {len(names)} names, but the benchmark has label {max(normal)}")
    return [str(names[c]) for c in normal]


@TRAINERS.register("eoe_clip")
class EOECLIPTrainer(Trainer):
    """CLIP fine-tuned with OE (see the module doc). Args: ``temperature`` (100), ``template``,
    ``anomaly_prompt``, ``class_names`` (null: the benchmark's)."""

    needs_outliers = "images"
    default_outliers: ClassVar[dict | None] = {"name": "oe_images"}
    trains = True

    def __init__(self, temperature: PositiveFloat = 100.0, template: str = TEMPLATE, anomaly_prompt: str = ANOMALY_PROMPT,
                 class_names: list[str] | None = None):
        if "{}" not in template:
            raise ConfigError(f"trainer.template: expected a '{{}}' for the class name, got {template!r}")
        self.temperature, self.template, self.anomaly_prompt = float(temperature), template, anomaly_prompt
        self.class_names = None if class_names is None else [str(c) for c in class_names]

    def setup(self, net, ctx):
        super().setup(net, ctx)
        if not callable(getattr(net, "encode_text", None)):
            raise ConfigError(f"trainer {type(self).__name__}: the network must be a CLIP model (network.name: clip)")
        self.pixels = PixelSpace(ctx.benchmark.preprocessor)
        self.prompts = clip_prompts(normal_class_names(ctx.benchmark, self.class_names), self.template,
                                    self.anomaly_prompt)
        with torch.no_grad():
            self.text = net.encode_text(self.prompts).detach()
        ctx.log.info("%s: prompts %s", type(self).__name__, self.prompts)

    def parameter_groups(self):
        return [{"params": self.net.image_parameters()}]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.pixels.to_unit(images).clamp(0, 1))

    def training_step(self, batch):
        images = batch.images
        labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
        if batch.outliers is not None:
            images = torch.cat([images, batch.outliers.to(images.device, images.dtype)])
            labels = torch.cat([labels, torch.ones(len(batch.outliers), dtype=torch.long, device=images.device)])
        elif self.needs_outliers:
            raise ConfigError("trainer eoe_clip: CLIP+OE needs outlier images (trainer.outliers)")
        emb = self.embed(images)
        text = self.text.to(emb.device)
        terms = {"loss": clip_oe_loss(emb, text, labels, self.temperature)}
        with torch.no_grad():
            s = clip_anomaly_score(emb.detach(), text, self.temperature)
            n = len(batch.images)  # normals first, then outliers: split by count, no host read
            terms["score_normal"] = s[:n].mean()
            if len(s) > n:
                terms["score_outlier"] = s[n:].mean()
        return terms

    @torch.no_grad()
    def anomaly_scores(self, images: torch.Tensor):
        """(p(anomaly prompt) [B], None); higher = more anomalous."""
        self.net.eval()
        return clip_anomaly_score(self.embed(images), self.text.to(images.device), self.temperature), None


@TRAINERS.register("eoe_clip_zero_shot")
class EOECLIPZeroShot(EOECLIPTrainer):
    """Zero-shot CLIP (no training, no outliers; see the module doc)."""

    needs_outliers = None
    default_outliers = None
    trains = False
