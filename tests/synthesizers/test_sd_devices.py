"""Stable Diffusion at full speed: float16 weights on CUDA (float32 on the CPU), the text-outlier sampler
on the pipeline's device, and (test_oaml.py) the same generated files. The CUDA choices are checked by
the arguments the pipeline is loaded and moved with (no GPU needed); the ``cuda`` ids run them for real."""

from __future__ import annotations

import torch

from openood_ext.synthesizers import sd_pipeline
from openood_ext.synthesizers.sd_pipeline import SDConfig, load_pipeline, pipeline_dtype, sample_text_outliers
from sweep_helpers import TINY_SD


class FakePipe:
    """Records how it is moved."""

    def __init__(self):
        self.moves, self.scheduler = [], type("S", (), {"config": {}})()

    def set_progress_bar_config(self, **_):
        pass

    def to(self, *args, **kwargs):
        self.moves.append((args, kwargs))
        return self


def test_weights_are_float16_on_cuda_and_float32_on_the_cpu():
    assert pipeline_dtype("cuda") == pipeline_dtype(torch.device("cuda:1")) == torch.float16
    assert pipeline_dtype("cpu") == torch.float32


def test_a_local_model_is_loaded_in_float16_and_moved_to_cuda(monkeypatch, tmp_path):
    import diffusers
    seen = {}

    def from_pretrained(model, **kwargs):
        seen.update(kwargs, model=model)
        return FakePipe()

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(diffusers.PNDMScheduler, "from_config", staticmethod(lambda config, **kw: "plms"))
    pipe = load_pipeline(SDConfig(model=str(tmp_path)), tmp_path / "tok", device="cuda")
    key = sd_pipeline._dtype_keyword()  # dtype on diffusers that deprecated torch_dtype
    assert seen[key] == torch.float16 and seen["local_files_only"]
    assert pipe.moves == [(("cuda", torch.float16), {})]
    cpu = load_pipeline(SDConfig(model=str(tmp_path)), tmp_path / "tok", device="cpu")
    assert seen[key] == torch.float32 and cpu.moves == [(("cpu", torch.float32), {})]


def test_the_tiny_model_follows_the_same_rule(monkeypatch, tmp_path):
    monkeypatch.setattr(sd_pipeline, "tiny_random_pipeline", lambda cfg, workdir: FakePipe())
    assert load_pipeline(SDConfig(**TINY_SD), tmp_path, device="cuda").moves == [(("cuda", torch.float16), {})]


def test_text_outlier_sampling_runs_on_the_device_with_the_cpu_stream(device):
    cfg = SDConfig(**TINY_SD)
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(2, 16, generator=g)
    feats = sd_pipeline.load_id_features(cfg, anchors, g, n=12)
    ref = sample_text_outliers(feats, anchors, cfg, torch.Generator().manual_seed(1))
    out = sample_text_outliers(feats.to(device), anchors.to(device), cfg, torch.Generator().manual_seed(1))
    assert out.device.type == device.type
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)  # same draws; float rounding of the search
