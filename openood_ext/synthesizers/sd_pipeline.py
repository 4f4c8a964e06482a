"""Stable-Diffusion outlier generation shared by ``sd_text_outliers`` and ``sd_latent_outliers``
(Dream-OOD, ``deeplearning-wisc/dream-ood`` ``scripts/{KNN,dream_ood}.py``, as used by OAML).

Steps (:func:`ensure_generated`, all written under ``root`` once and reused):

1. anchors a_c = the text encoder's **input token embedding** of each class name's first BPE token
   (SD v1.4: CLIP ViT-L/14, 768-d) (:func:`class_anchors`);
2. ID class features [C, N, D] aligned with the anchors (``id_features``: a .pt/.npy file written by the
   ID feature model, or ``synthetic`` = normalised anchors + Gaussian noise, an offline stand-in for tests
   and smoke runs only -- it is not Dream-OOD's trained model);
3. the NPOS sampler (:func:`openood_ext.synthesizers.npos.npos_sample`, reused) on the **normalised**
   features of each class (K, ``select`` boundary points all used, ``candidates`` draws at sigma, ``keep``
   per boundary point), ``repeats`` times, with a fresh Gaussian G for every class and repeat (as
   dream-ood ``get_embed_cifar*.py``); candidates are re-normalised and rescaled by ||a_c||
   -> ``text_outliers.pt`` {outliers [C, M, D], anchors [C, D], classes}; ``ranking`` as in
   :func:`~.npos.npos_sample` (``published`` = the code's mixed-up ranking);
4. decoding: prompt "A high-quality image of the <class>" with the class token's embedding row replaced
   by an outlier of that class (:func:`encode_with_replacement`), PNDM/PLMS ``steps`` steps,
   classifier-free guidance with the empty prompt, ``size`` px; the final denoised latents z_0 (scaled SD
   latent space) are saved next to each image (saved at ``save_size`` px); ``images.txt`` lists
   ``images/<class>/<k>.png <label>`` and is rewritten after every chunk, so an interrupted run resumes
   from the last complete chunk. Every chunk draws from its own generator seeded by (seed, class, chunk):
   the output is deterministic per seed and independent of interruptions.

Layout: ``batches: N > 0`` (the published run, OAML ``outlier-generation.py --n_iter 50 --n_samples 3``):
N batches of ``chunk`` images; each batch draws its class uniformly at random and ONE outlier of that
class, shared by the whole batch -> N x chunk latents in all (150). ``batches: 0``: ``images_per_class``
images per class, a fresh outlier per image (C x images_per_class latents).

``replace_token: false`` reproduces the published CIFAR run: OAML's fork overwrites its conditioner's
label list with ImageNet-1k names, so the row it replaces belongs to an ImageNet class name's token that
is not in the CIFAR prompt, and the images are conditioned on the plain prompt. ``true`` (default, the
method as described): the class token is in the prompt and its row is the one replaced (tested).

``model``: ``tiny-random`` (a small UNet, VAE, CLIP text encoder and a generated BPE tokenizer built from
configs, offline), a local diffusers directory, or a hub id already in the local Hugging Face cache.
diffusers/transformers are imported inside functions.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..networks.clip_vocab import write_tiny_clip_vocab
from ..schema import NonNegativeInt, PositiveInt, check_value
from ..utils.io import write_json, write_stream, write_text

PROMPT = "A high-quality image of the {}"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class SDConfig:
    """Everything that determines the generated outliers (saved in ``root/meta.json``)."""

    model: str = "CompVis/stable-diffusion-v1-4"
    classes: list[str] = field(default_factory=lambda: list(CIFAR10_CLASSES))
    id_features: str = "synthetic"
    K: PositiveInt = 300
    select: PositiveInt = 50
    candidates: PositiveInt = 1500
    keep: PositiveInt = 2
    sigma: float = 0.07
    repeats: PositiveInt = 100
    images_per_class: PositiveInt = 150
    chunk: PositiveInt = 3
    steps: PositiveInt = 50
    guidance: float = 7.5
    size: PositiveInt = 512
    save_size: PositiveInt = 256
    seed: int = 42
    prompt: str = PROMPT
    batches: NonNegativeInt = 0
    replace_token: bool = True
    ranking: str = "intended"

    def check(self) -> "SDConfig":
        import typing
        hints = typing.get_type_hints(SDConfig, include_extras=True)
        for f in fields(self):
            if typing.get_origin(hints[f.name]) is typing.Annotated:  # the ranged counts
                check_value(f"outliers.{f.name}", getattr(self, f.name), hints[f.name])
        if not self.classes:
            raise ConfigError("outliers.classes: expected the ID class names")
        if self.ranking not in ("intended", "published"):
            raise ConfigError(f"outliers.ranking: expected intended or published, got {self.ranking!r}")
        if "{}" not in self.prompt:
            raise ConfigError(f"outliers.prompt: expected a '{{}}' for the class name, got {self.prompt!r}")
        return self

    def fingerprint(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ tiny tokenizer
def _prompt_words(cfg: SDConfig) -> list[str]:
    import re
    text = " ".join([cfg.prompt.format(c) for c in cfg.classes]).lower()
    return re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text)


def tiny_random_pipeline(cfg: SDConfig, workdir: Path):
    """A small random StableDiffusionPipeline (UNet 8x8 latents, VAE x2, 2-layer CLIP text encoder,
    generated tokenizer), built from configs with a fixed seed; images are 16 px."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = write_tiny_clip_vocab(workdir, _prompt_words(cfg))
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
                            norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                            pad_token_id=tok.pad_token_id))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def pipeline_dtype(device: str | torch.device) -> torch.dtype:
    """The weights' dtype: float16 on CUDA (as Dream-OOD runs SD; about twice the speed and half the
    memory of float32), float32 elsewhere (CPU half-precision convolutions are slow or missing)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _dtype_keyword() -> str:
    """``from_pretrained``'s weight-dtype keyword: ``dtype`` from the diffusers release that deprecated
    ``torch_dtype`` (mid 2026; it added the message checked here), ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils
    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def load_pipeline(cfg: SDConfig, workdir: Path, device: str | torch.device = "cpu"):
    """``tiny-random`` | a local directory | a hub id present in the local HF cache (else ConfigError);
    on ``device`` with :func:`pipeline_dtype` weights."""
    dtype = pipeline_dtype(device)
    if cfg.model == "tiny-random":
        pipe = tiny_random_pipeline(cfg, workdir)
    else:
        from diffusers import PNDMScheduler, StableDiffusionPipeline
        local = Path(cfg.model).is_dir()
        try:
            pipe = StableDiffusionPipeline.from_pretrained(cfg.model, safety_checker=None, requires_safety_checker=False,
                                                           local_files_only=True, **{_dtype_keyword(): dtype})
        except Exception as exc:
            if local:
                raise ConfigError(f"outliers.model: {cfg.model} is not a diffusers Stable Diffusion directory "
                                  f"({type(exc).__name__})") from None
            raise ConfigError(f"outliers.model: hub id {cfg.model!r} is not available offline; download it "
                              f"(e.g. huggingface-cli download {cfg.model}) and give its local directory as "
                              f"outliers.model, or use model: tiny-random for a test run") from None
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)  # PLMS
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


# ------------------------------------------------------------------------------------ token handling
def class_token_id(tokenizer, name: str) -> int:
    """The first BPE token of ``name`` (Dream-OOD's anchor token)."""
    ids = tokenizer(name, add_special_tokens=False).input_ids
    if not ids:
        raise DataError(f"outliers.classes: class name {name!r} tokenizes to nothing")
    return int(ids[0])


def class_anchors(pipe, classes: list[str]) -> torch.Tensor:
    """[C, D] input token-embedding rows of the class names' first tokens."""
    emb = pipe.text_encoder.get_input_embeddings().weight
    return torch.stack([emb[class_token_id(pipe.tokenizer, c)].detach().float().cpu() for c in classes])


@contextlib.contextmanager
def replaced_token(text_encoder, token_id: int, vector: torch.Tensor):
    """Temporarily set the input-embedding row ``token_id`` to ``vector`` (restored on exit)."""
    weight = text_encoder.get_input_embeddings().weight
    saved = weight.data[token_id].clone()
    with torch.no_grad():
        weight.data[token_id] = vector.to(weight.device, weight.dtype)
    try:
        yield
    finally:
        with torch.no_grad():
            weight.data[token_id] = saved


@torch.no_grad()
def encode_prompt(pipe, prompt: str) -> torch.Tensor:
    tok = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


@torch.no_grad()
def encode_with_replacement(pipe, class_name: str, vector: torch.Tensor, prompt: str = PROMPT) -> torch.Tensor:
    """Prompt embeddings [1, L, D] of ``prompt.format(class_name)`` with the class token's input
    embedding replaced by ``vector``. Raises DataError if the class token is not in the prompt's ids."""
    text = prompt.format(class_name)
    tid = class_token_id(pipe.tokenizer, class_name)
    ids = pipe.tokenizer(text).input_ids
    if tid not in ids:
        raise DataError(f"outliers: the token of class {class_name!r} is not in the prompt {text!r}")
    with replaced_token(pipe.text_encoder, tid, vector):
        return encode_prompt(pipe, text)


# ------------------------------------------------------------------------------------ text outliers
def load_id_features(cfg: SDConfig, anchors: torch.Tensor, generator: torch.Generator, n: int = 500) -> torch.Tensor:
    """[C, N, D] ID features in the anchors' space (see the module docstring, step 2)."""
    if cfg.id_features == "synthetic":
        unit = anchors / anchors.norm(dim=1, keepdim=True)
        feats = unit[:, None, :] + 0.3 * torch.randn(len(anchors), n, anchors.shape[1], generator=generator) / math.sqrt(anchors.shape[1])
        return feats
    path = Path(cfg.id_features)
    if not path.is_file():
        raise DataError(f"outliers.id_features: {path} not found (a [C, N, {anchors.shape[1]}] tensor of ID "
                        f"features from the anchor-aligned feature model, or 'synthetic' for a test run)")
    feats = torch.as_tensor(np.load(path)) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    if feats.ndim != 3 or feats.shape[0] != len(anchors) or feats.shape[2] != anchors.shape[1]:
        raise DataError(f"outliers.id_features: {path} has shape {tuple(feats.shape)}, expected "
                        f"[{len(anchors)}, N, {anchors.shape[1]}]")
    return feats.float()


def dream_ood_params(cfg: SDConfig, queue: int):
    """The sampler sizes of Dream-OOD's text-space sampler: every boundary point used (pick = select)."""
    from .npos import NPOSParams
    return NPOSParams(K=cfg.K, select=cfg.select, pick=cfg.select, candidates=cfg.candidates, keep=cfg.keep,
                      sigma=cfg.sigma).check(queue, where="outliers")


def dream_ood_class_sample(unit: torch.Tensor, anchor_norm: float, params, ranking: str = "intended", *,
                           noise: torch.Tensor | None = None, picks: torch.Tensor | None = None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of Dream-OOD's sampler for one class: ``unit`` [N, D] normalised ID features ->
    [select * keep, D] outliers (boundary point after boundary point, in pick order), re-normalised and
    scaled to ``anchor_norm``. ``noise`` [candidates, D] / ``picks`` [select] fix the draws."""
    from .npos import npos_sample

    s = npos_sample(unit[None], params, generator=generator, noise=noise,
                    picks=None if picks is None else torch.as_tensor(picks)[None], backend="torch", ranking=ranking)
    o = s.outliers.reshape(-1, unit.shape[1])
    return o / o.norm(dim=-1, keepdim=True) * anchor_norm


def sample_text_outliers(features: torch.Tensor, anchors: torch.Tensor, cfg: SDConfig,
                         generator: torch.Generator) -> torch.Tensor:
    """Dream-OOD's sampler (:func:`dream_ood_class_sample`) on the normalised ``features`` [C, N, D]: for
    each class, ``repeats`` draws, each with a fresh Gaussian G and a fresh order of the boundary points
    (class after class, repeat after repeat, as published). Returns [C, repeats * select * keep, D]."""
    unit = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    params = dream_ood_params(cfg, unit.shape[1])
    norms = anchors.norm(dim=1)
    return torch.stack([torch.cat([dream_ood_class_sample(unit[c], float(norms[c]), params, cfg.ranking,
                                                          generator=generator)
                                   for _ in range(cfg.repeats)]) for c in range(len(unit))])


# ------------------------------------------------------------------------------------ generation
def read_list(root: Path) -> list[str]:
    p = root / "images.txt"
    return [l for l in p.read_text().splitlines() if l.strip()] if p.is_file() else []


def batch_classes(cfg: SDConfig) -> list[int]:
    """The class of each batch of the published layout (``batches`` > 0): uniform, seeded by ``seed``."""
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randint(len(cfg.classes), (cfg.batches,), generator=g).tolist()


def generation_chunks(cfg: SDConfig) -> list[tuple[int, int, list[int]]]:
    """(class, first index, image indices) of every generated batch; indices k are per class
    (``batches: 0``) or global (``batches > 0``), so (class, k) names one image either way."""
    if cfg.batches:
        return [(c, b * cfg.chunk, list(range(b * cfg.chunk, (b + 1) * cfg.chunk)))
                for b, c in enumerate(batch_classes(cfg))]
    return [(c, start, list(range(start, min(start + cfg.chunk, cfg.images_per_class))))
            for c in range(len(cfg.classes)) for start in range(0, cfg.images_per_class, cfg.chunk)]


def expected_entries(cfg: SDConfig) -> list[tuple[int, int]]:
    return [(c, k) for c, _, ks in generation_chunks(cfg) for k in ks]


def entry_paths(root: Path, cfg: SDConfig, c: int, k: int) -> tuple[str, Path]:
    rel = f"images/{c:03d}_{cfg.classes[c]}/{k:06d}.png"
    return rel, root / "latents" / f"{c:03d}_{cfg.classes[c]}" / f"{k:06d}.npy"


def status(root: Path, cfg: SDConfig) -> tuple[bool, list[str]]:
    """(complete, problems): complete when meta matches ``cfg``, the pool exists and every listed
    image and latent exists for the expected count."""
    problems = []
    meta = root / "meta.json"
    if not meta.is_file():
        return False, [f"{meta} missing"]
    if json.loads(meta.read_text()).get("config") != json.loads(json.dumps(cfg.fingerprint())):
        problems.append(f"{meta} was written for other settings")
    if not (root / "text_outliers.pt").is_file():
        problems.append(f"{root / 'text_outliers.pt'} missing")
    lines = set(read_list(root))
    missing = 0
    for c, k in expected_entries(cfg):
        rel, lat = entry_paths(root, cfg, c, k)
        if f"{rel} {c}" not in lines or not (root / rel).is_file() or not lat.is_file():
            missing += 1
    if missing:
        problems.append(f"{root / 'images.txt'}: {missing} of {len(expected_entries(cfg))} "
                        f"images/latents missing or unlisted")
    return not problems, problems


def batch_condition(pipe, cfg: SDConfig, pool: torch.Tensor, c: int, n: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings [n, L, D], pool rows [n]) of one batch of class ``c``: one outlier row shared by
    the batch in the published layout (``batches`` > 0), else one per image; with ``replace_token: false``
    the plain prompt (the published CIFAR run), the rows then being drawn but unused."""
    rows = torch.randint(pool.shape[1], (1 if cfg.batches else n,), generator=generator).expand(n)
    if not cfg.replace_token:
        return encode_prompt(pipe, cfg.prompt.format(cfg.classes[c])).expand(n, -1, -1), rows
    cache = {}
    for r in rows.tolist():
        if r not in cache:
            cache[r] = encode_with_replacement(pipe, cfg.classes[c], pool[c, r], cfg.prompt)
    return torch.cat([cache[r] for r in rows.tolist()]), rows


def ensure_generated(root: str | Path, cfg: SDConfig, device: str | torch.device = "cpu", log=None) -> dict:
    """Generate what is missing under ``root`` (resumable); returns timing figures."""
    import time

    from ..utils.runtime import progress

    cfg.check()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / "meta.json"
    fp = json.loads(json.dumps(cfg.fingerprint()))
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("config") != fp:
        raise DataError(f"{meta_path}: outliers under {root} were generated with other settings; use another "
                        f"outliers.root or delete the folder")
    complete, _ = status(root, cfg) if meta_path.is_file() else (False, [])
    if complete:
        return {"generated": 0, "seconds": 0.0}
    write_json(meta_path, {"config": fp})
    pipe = load_pipeline(cfg, root / "tokenizer", device)
    pool_path = root / "text_outliers.pt"
    if not pool_path.is_file():
        g = torch.Generator().manual_seed(cfg.seed)  # a CPU stream: the same draws on every device
        anchors = class_anchors(pipe, cfg.classes)  # float32, CPU
        feats = load_id_features(cfg, anchors, g)
        dev = pipe.unet.device  # the K-NN search of the sampler on the device, in float32
        pool = sample_text_outliers(feats.to(dev, torch.float32), anchors.to(dev), cfg, g).cpu()
        write_stream(pool_path, lambda fh: torch.save({"outliers": pool, "anchors": anchors,
                                                         "classes": list(cfg.classes)}, fh))
    pool = torch.load(pool_path, map_location="cpu", weights_only=True)["outliers"]
    lines = set(read_list(root))
    uncond = encode_prompt(pipe, "")
    todo = [(c, start, ks) for c, start, ks in generation_chunks(cfg)
            if not all(f"{entry_paths(root, cfg, c, k)[0]} {c}" in lines and (root / entry_paths(root, cfg, c, k)[0]).is_file()
                       and entry_paths(root, cfg, c, k)[1].is_file() for k in ks)]
    t0, n = time.perf_counter(), 0
    for c, start, ks in progress(todo, desc="SD outliers"):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + c * 10_007 + start)
        cond, _ = batch_condition(pipe, cfg, pool, c, len(ks), g)
        dev = pipe.unet.device
        latents0 = torch.randn(len(ks), pipe.unet.config.in_channels, cfg.size // pipe.vae_scale_factor,
                               cfg.size // pipe.vae_scale_factor, generator=g).to(dev, pipe.unet.dtype)
        z = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond.expand(len(ks), -1, -1),
                 num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, height=cfg.size, width=cfg.size,
                 latents=latents0, output_type="latent").images
        with torch.no_grad():
            img = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
        pil = pipe.image_processor.postprocess(img, output_type="pil")
        for k, zi, im in zip(ks, z, pil):
            rel, lat = entry_paths(root, cfg, c, k)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            lat.parent.mkdir(parents=True, exist_ok=True)
            small, latent = im.resize((cfg.save_size, cfg.save_size)), zi.float().cpu().numpy()
            write_stream(root / rel, lambda fh, small=small: small.save(fh, format="PNG"))
            write_stream(lat, lambda fh, latent=latent: np.save(fh, latent))
            lines.add(f"{rel} {c}")
        write_text(root / "images.txt", "\n".join(sorted(lines)) + "\n")
        n += len(ks)
    secs = time.perf_counter() - t0
    if log is not None and n:
        log.info("SD outliers: %d images in %.1f s (%.2f images/s) under %s", n, secs, n / secs, root)
    return {"generated": n, "seconds": secs}
