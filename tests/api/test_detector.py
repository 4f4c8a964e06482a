"""The Detector: fit from images or outputs, score batches on the network's device, calibrate a cut-off,
save and load its fitted statistics, and refuse a file or a network it was not written for."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from conftest import image_loader
from openood_ext import Detector
from openood_ext.errors import ConfigError
from openood_ext.features import extract_outputs


def make_net(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, classes))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    train, val, ood = (torch.randn(n, 1, 8, 8, generator=g) for n in (60, 40, 20))
    ood = ood * 4 + 3
    labels = torch.randint(0, 3, (60,), generator=g)
    return image_loader(train, labels), image_loader(val, torch.zeros(40, dtype=torch.long)), val, ood


@pytest.mark.parametrize("method, kwargs", [("knn", {"k": 5}), ("msp", {}), ("vim", {"dim": 4}), ("mds", {}),
                                            ("gram", {}), ("odin", {})])
def test_fit_score_save_load_gives_the_same_confidences(method, kwargs, data, tmp_path):
    train, val_loader, val, ood = data
    net = make_net()
    det = Detector(method, net, **kwargs).fit(train, val_loader)
    conf = det(val)
    assert conf.shape == (40,) and conf.dtype == torch.float32 and torch.isfinite(conf).all()
    path = det.save(tmp_path / f"{method}.pt")
    again = Detector.load(path, make_net())  # same architecture, other weights: statistics come from the file
    assert again.name == det.name
    loaded = Detector.load(path, net)
    torch.testing.assert_close(loaded(val), conf)
    torch.testing.assert_close(loaded(ood), det(ood))


def test_batches_larger_than_batch_size_are_split_and_give_the_same_scores(data):
    train, _, val, _ = data
    det = Detector("knn", make_net(), k=3, batch_size=7).fit(train)
    whole = Detector("knn", make_net(), k=3).fit(train)
    torch.testing.assert_close(det(val), whole(val))


def test_fit_outputs_equals_fit(data):
    train, _, val, _ = data
    net = make_net()
    from openood_ext.api.model import ModelAdapter
    outputs = extract_outputs(ModelAdapter(net), train)
    outputs.extras.clear()  # the detector adds the classifier's weights itself
    a = Detector("vim", net, dim=4).fit_outputs(outputs)
    b = Detector("vim", net, dim=4).fit(train)
    torch.testing.assert_close(a(val), b(val))
    with pytest.raises(ConfigError, match="fit it from images"):
        Detector("gram", net).fit_outputs(outputs)


def test_threshold_keeps_the_asked_fraction_of_id_images(data, tmp_path):
    train, val_loader, val, ood = data
    det = Detector("knn", make_net(), k=5).fit(train)
    cut = det.threshold(val_loader, tpr=0.95)
    conf = det(val)
    kept = int((conf >= cut).sum())
    assert kept >= 38 and int((conf > cut).sum()) < 38  # 95 % of 40 ID images
    assert int(det.predict(val).sum()) == kept
    assert det.predict(ood).float().mean().item() < 0.5
    assert Detector.load(det.save(tmp_path / "k.pt"), make_net()).cutoff == cut
    with pytest.raises(ConfigError, match="tpr"):
        det.threshold(val_loader, tpr=1.5)


def test_load_refuses_another_output_size_another_architecture_and_another_version(data, tmp_path):
    train, *_ = data
    path = Detector("msp", make_net()).fit(train).save(tmp_path / "msp.pt")
    with pytest.raises(ConfigError) as err:
        Detector.load(path, make_net(classes=5))
    assert "3 outputs" in str(err.value) and "\n" not in str(err.value)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ConfigError) as err:
        Detector.load(path, other)
    assert "another architecture" in str(err.value) and "\n" not in str(err.value)
    blob = torch.load(path, weights_only=False)
    blob["version"] = 99
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(ConfigError) as err:
        Detector.load(tmp_path / "future.pt", make_net())
    assert "format version 99" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a detector")
    with pytest.raises(ConfigError, match="not a saved detector"):
        Detector.load(tmp_path / "junk.pt", make_net())


def test_the_file_holds_no_weights_and_no_images(data, tmp_path):
    train, *_ = data
    net = make_net()
    blob = torch.load(Detector("mds", net).fit(train).save(tmp_path / "m.pt"), weights_only=False)

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from tensors(v)
        elif hasattr(value, "__dict__"):
            yield from tensors(vars(value))

    found = list(tensors(blob["state"]))
    assert found and all(t.ndim <= 2 and t.shape[-1] in (8, 3) for t in found if t.ndim)  # 8-d features, 3 classes
    assert not any(k in blob for k in ("weights", "state_dict"))


def test_scoring_is_safe_from_several_threads(data):
    train, _, val, _ = data
    det = Detector("knn", make_net(), k=5).fit(train)
    expected = det(val)
    results, errors = [], []

    def work():
        try:
            results.append(det(val))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(torch.equal(r, expected) for r in results)


def test_scoring_before_fit_is_refused(data):
    with pytest.raises(RuntimeError, match="fit"):
        Detector("msp", make_net())(data[2])
