"""CLIP through transformers' ``CLIPModel`` (EOE's zero-shot and OE-fine-tuned CLIP anomaly detectors).

    network: {name: clip, model: openai/clip-vit-base-patch32}   # a hub id in the local HF cache,
                                                                 # a local directory, or tiny-random

``model``: a hub id already in the local Hugging Face cache or a local directory (``CLIPModel`` +
``CLIPProcessor`` files; e.g. ``huggingface-cli download openai/clip-vit-base-patch32``); anything else is a
one-line :class:`ConfigError` naming the id and the local-directory alternative (nothing is downloaded).
``tiny-random``: a 2-layer, 32-wide CLIP (ViT with 8-px patches on 32-px images, 16-d embeddings) with
random weights (seed 0) and a generated BPE tokenizer (the SD tiny tokenizer of
:mod:`openood_ext.synthesizers.sd_pipeline`), offline, for tests and plumbing runs only.

``forward(x)``: images in [0, 1] ([B, C, H, W], any size; 1 channel is repeated to RGB) -> image embeddings
[B, D] (projected, not normalised). ``encode_text(prompts) -> [P, D]`` (projected, not normalised).

CLIP's preprocessing (resize the shorter side to the crop size, bicubic; centre crop; CLIP's mean/std),
``preprocessing``:

* ``tensor`` (default): on the float tensor (torch's antialiased bicubic), differentiable, batched.
* ``pil`` (EOE's: ``clip.load``'s transform): each image as 8-bit RGB (round(255 x)) through PIL's
  bicubic ``Resize``, ``CenterCrop``, ``ToTensor``. This is the published preprocessing of the test
  images exactly (EOE gives CLIP the 8-bit image); EOE's training images get the +0.001 N(0, 1) noise
  after this resize, while the benchmark adds it before (it is rounded away here).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .clip_vocab import write_tiny_clip_vocab
from .registry import NETWORKS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HUB_DEFAULT = "openai/clip-vit-base-patch32"
TINY_WORDS = ("a", "photo", "of", "something")  # merged into single tokens; other words become byte tokens


def tiny_random_clip():
    """(CLIPModel, tokenizer, (mean, std, crop size)) of a small random CLIP (see the module doc)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_tiny_clip_vocab(Path(tmp), list(TINY_WORDS))
        tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    return model, tok, (CLIP_MEAN, CLIP_STD, 32)


def load_clip(model: str):
    """(CLIPModel, tokenizer, (mean, std, crop size)) for ``tiny-random``, a local directory or a cached hub id."""
    if model == "tiny-random":
        return tiny_random_clip()
    from transformers import CLIPModel, CLIPProcessor
    try:
        net = CLIPModel.from_pretrained(model, local_files_only=True)
        proc = CLIPProcessor.from_pretrained(model, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  (any loading failure becomes the one-line error)
        if Path(model).is_dir():
            raise ConfigError(f"network.model: {model} is not a CLIPModel + CLIPProcessor directory "
                              f"({type(exc).__name__})") from None
        raise ConfigError(f"network.model: CLIP model {model!r} is not available offline; download it (e.g. "
                          f"huggingface-cli download {model}) and give its local directory as network.model, "
                          f"or use model: tiny-random for a test run") from None
    ip = proc.image_processor
    crop = ip.crop_size
    size = int(crop["height"] if isinstance(crop, dict) else crop)
    return net, proc.tokenizer, (tuple(ip.image_mean), tuple(ip.image_std), size)


def _features(out) -> torch.Tensor:
    """transformers >= 5 returns a model output whose ``pooler_output`` holds the projected embeddings."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def pil_resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """[0, 1] RGB images [B, 3, H, W] -> 8-bit PIL, bicubic resize of the shorter side to ``size``, centre
    crop ``size``, back to [0, 1] tensors [B, 3, size, size] (CLIP's own PIL preprocessing, without the
    normalisation)."""
    import torchvision.transforms as T
    from PIL import Image

    pipe = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])
    q = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return torch.stack([pipe(Image.fromarray(img, "RGB")) for img in q]).to(x.device, x.dtype)


@NETWORKS.register("clip")
class CLIPNet(nn.Module):
    """CLIP's image encoder as the AD network, its text encoder for the prompts (see the module doc)."""

    def __init__(self, model: str = HUB_DEFAULT, preprocessing: Literal["tensor", "pil"] = "tensor"):
        super().__init__()
        self.model_name, self.preprocessing = model, preprocessing
        self.clip, self.tokenizer, (mean, std, size) = load_clip(model)
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> CLIP's input (resize shorter side, centre crop, normalise; see ``preprocessing``)."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.preprocessing == "pil":
            return (pil_resize_crop(x, self.size) - self.mean) / self.std
        h, w = x.shape[-2:]
        if min(h, w) != self.size:
            scale = self.size / min(h, w)
            x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                              mode="bicubic", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _features(self.clip.get_image_features(pixel_values=self.preprocess(x)))

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        tokens = self.tokenizer(list(prompts), padding=True, return_tensors="pt").to(device)
        return _features(self.clip.get_text_features(input_ids=tokens["input_ids"],
                                                     attention_mask=tokens["attention_mask"]))

    def image_parameters(self) -> list[nn.Parameter]:
        """What EOE's CLIP+OE training changes: the vision tower and its projection."""
        return list(self.clip.vision_model.parameters()) + list(self.clip.visual_projection.parameters())
