"""OpenOOD v1.5 checkpoints load into our networks unchanged (state-dict names, DDP ``module.`` prefix).

The reference is OpenOOD's own class definitions: imported when the ``openood`` package is installed,
otherwise the key list and reference logits below, generated once from OpenOOD's ``ResNet18_32x32``
(github.com/Jingkang50/OpenOOD, openood/networks/resnet18_32x32.py at 3c35632) with the weights of
:func:`fill` and the input of :func:`probe`. OpenOOD's ``ResNet18_224x224`` and ``ResNet50`` subclass
torchvision's ``ResNet`` without adding parameters and compute ``fc(avgpool(...))`` as torchvision does,
so torchvision's modules produce exactly their state dicts and logits.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from openood_ext.errors import CheckpointError
from openood_ext.networks import NETWORKS
from openood_ext.networks.checkpoint import load_checkpoint

# "name:shape" of OpenOOD's ResNet18_32x32(num_classes=10).state_dict(), in its order ("-": a scalar).
OPENOOD_RESNET18_32X32_KEYS = ["conv1.weight:64x3x3x3", "bn1.weight:64", "bn1.bias:64", "bn1.running_mean:64", "bn1.running_var:64", "bn1.num_batches_tracked:-", "layer1.0.conv1.weight:64x64x3x3", "layer1.0.bn1.weight:64", "layer1.0.bn1.bias:64", "layer1.0.bn1.running_mean:64", "layer1.0.bn1.running_var:64", "layer1.0.bn1.num_batches_tracked:-", "layer1.0.conv2.weight:64x64x3x3", "layer1.0.bn2.weight:64", "layer1.0.bn2.bias:64", "layer1.0.bn2.running_mean:64", "layer1.0.bn2.running_var:64", "layer1.0.bn2.num_batches_tracked:-", "layer1.1.conv1.weight:64x64x3x3", "layer1.1.bn1.weight:64", "layer1.1.bn1.bias:64", "layer1.1.bn1.running_mean:64", "layer1.1.bn1.running_var:64", "layer1.1.bn1.num_batches_tracked:-", "layer1.1.conv2.weight:64x64x3x3", "layer1.1.bn2.weight:64", "layer1.1.bn2.bias:64", "layer1.1.bn2.running_mean:64", "layer1.1.bn2.running_var:64", "layer1.1.bn2.num_batches_tracked:-", "layer2.0.conv1.weight:128x64x3x3", "layer2.0.bn1.weight:128", "layer2.0.bn1.bias:128", "layer2.0.bn1.running_mean:128", "layer2.0.bn1.running_var:128", "layer2.0.bn1.num_batches_tracked:-", "layer2.0.conv2.weight:128x128x3x3", "layer2.0.bn2.weight:128", "layer2.0.bn2.bias:128", "layer2.0.bn2.running_mean:128", "layer2.0.bn2.running_var:128", "layer2.0.bn2.num_batches_tracked:-", "layer2.0.shortcut.0.weight:128x64x1x1", "layer2.0.shortcut.1.weight:128", "layer2.0.shortcut.1.bias:128", "layer2.0.shortcut.1.running_mean:128", "layer2.0.shortcut.1.running_var:128", "layer2.0.shortcut.1.num_batches_tracked:-", "layer2.1.conv1.weight:128x128x3x3", "layer2.1.bn1.weight:128", "layer2.1.bn1.bias:128", "layer2.1.bn1.running_mean:128", "layer2.1.bn1.running_var:128", "layer2.1.bn1.num_batches_tracked:-", "layer2.1.conv2.weight:128x128x3x3", "layer2.1.bn2.weight:128", "layer2.1.bn2.bias:128", "layer2.1.bn2.running_mean:128", "layer2.1.bn2.running_var:128", "layer2.1.bn2.num_batches_tracked:-", "layer3.0.conv1.weight:256x128x3x3", "layer3.0.bn1.weight:256", "layer3.0.bn1.bias:256", "layer3.0.bn1.running_mean:256", "layer3.0.bn1.running_var:256", "layer3.0.bn1.num_batches_tracked:-", "layer3.0.conv2.weight:256x256x3x3", "layer3.0.bn2.weight:256", "layer3.0.bn2.bias:256", "layer3.0.bn2.running_mean:256", "layer3.0.bn2.running_var:256", "layer3.0.bn2.num_batches_tracked:-", "layer3.0.shortcut.0.weight:256x128x1x1", "layer3.0.shortcut.1.weight:256", "layer3.0.shortcut.1.bias:256", "layer3.0.shortcut.1.running_mean:256", "layer3.0.shortcut.1.running_var:256", "layer3.0.shortcut.1.num_batches_tracked:-", "layer3.1.conv1.weight:256x256x3x3", "layer3.1.bn1.weight:256", "layer3.1.bn1.bias:256", "layer3.1.bn1.running_mean:256", "layer3.1.bn1.running_var:256", "layer3.1.bn1.num_batches_tracked:-", "layer3.1.conv2.weight:256x256x3x3", "layer3.1.bn2.weight:256", "layer3.1.bn2.bias:256", "layer3.1.bn2.running_mean:256", "layer3.1.bn2.running_var:256", "layer3.1.bn2.num_batches_tracked:-", "layer4.0.conv1.weight:512x256x3x3", "layer4.0.bn1.weight:512", "layer4.0.bn1.bias:512", "layer4.0.bn1.running_mean:512", "layer4.0.bn1.running_var:512", "layer4.0.bn1.num_batches_tracked:-", "layer4.0.conv2.weight:512x512x3x3", "layer4.0.bn2.weight:512", "layer4.0.bn2.bias:512", "layer4.0.bn2.running_mean:512", "layer4.0.bn2.running_var:512", "layer4.0.bn2.num_batches_tracked:-", "layer4.0.shortcut.0.weight:512x256x1x1", "layer4.0.shortcut.1.weight:512", "layer4.0.shortcut.1.bias:512", "layer4.0.shortcut.1.running_mean:512", "layer4.0.shortcut.1.running_var:512", "layer4.0.shortcut.1.num_batches_tracked:-", "layer4.1.conv1.weight:512x512x3x3", "layer4.1.bn1.weight:512", "layer4.1.bn1.bias:512", "layer4.1.bn1.running_mean:512", "layer4.1.bn1.running_var:512", "layer4.1.bn1.num_batches_tracked:-", "layer4.1.conv2.weight:512x512x3x3", "layer4.1.bn2.weight:512", "layer4.1.bn2.bias:512", "layer4.1.bn2.running_mean:512", "layer4.1.bn2.running_var:512", "layer4.1.bn2.num_batches_tracked:-", "fc.weight:10x512", "fc.bias:10"]
# OpenOOD's ResNet18_32x32 logits for fill(its state dict) and probe(32) (rounded to 5 decimals).
OPENOOD_RESNET18_32X32_LOGITS = [
    [60.04089, -0.98761, -3.86898, -19.11392, 2.8624, 27.99852, -23.6819, 26.62469, 18.13519, 3.86843],
    [58.59586, -0.84339, -0.08332, -19.00167, 0.85562, 28.36297, -26.36301, 21.92936, 18.93093, 4.07688]]


def fill(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Deterministic weights for a state dict's names and shapes (He-scaled convs, positive variances)."""
    g = torch.Generator().manual_seed(17)
    out = {}
    for k in sorted(shapes):
        shape = shapes[k]
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros(shape, dtype=torch.long)
            continue
        t = torch.randn(shape, generator=g)
        if k.endswith("running_var"):
            t = t.abs() + 0.5
        elif k.endswith(".weight") and len(shape) > 1:
            t = t * (2.0 / torch.Size(shape[1:]).numel()) ** 0.5
        out[k] = t
    return out


def probe(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))


def openood_resnet18_32x32_reference() -> tuple[dict[str, tuple], torch.Tensor]:
    """(names -> shapes, logits on probe(32)) of OpenOOD's class: live when importable, else embedded."""
    try:
        from openood.networks.resnet18_32x32 import ResNet18_32x32
    except ImportError:
        shapes = {}
        for item in OPENOOD_RESNET18_32X32_KEYS:
            name, shape = item.split(":")
            shapes[name] = () if shape == "-" else tuple(int(s) for s in shape.split("x"))
        return shapes, torch.tensor(OPENOOD_RESNET18_32X32_LOGITS)
    net = ResNet18_32x32(num_classes=10).eval()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict(fill(shapes))
    with torch.no_grad():
        return shapes, net(probe(32))


def save_openood_ckpt(path, state: dict, ddp: bool) -> str:
    torch.save({("module." + k if ddp else k): v for k, v in state.items()}, path)  # OpenOOD's best.ckpt
    return str(path)


@pytest.mark.parametrize("ddp", [False, True])
def test_resnet18_32x32_uses_openood_names_and_computes_their_logits(tmp_path, ddp):
    shapes, logits = openood_resnet18_32x32_reference()
    net = NETWORKS.build({"name": "resnet18_32x32", "num_classes": 10}).eval()
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == list(shapes.items())
    load_checkpoint(save_openood_ckpt(tmp_path / "best.ckpt", fill(shapes), ddp), net)
    with torch.no_grad():
        ours = net(probe(32))
    torch.testing.assert_close(ours, logits, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize(("name", "torchvision_net", "classes", "ddp"), [
    ("resnet18_224x224", "resnet18", 200, True),   # ImageNet-200
    ("resnet50", "resnet50", 1000, False),          # ImageNet-1K (torchvision's weights)
])
def test_imagenet_checkpoints_load_unchanged(tmp_path, name, torchvision_net, classes, ddp):
    ref = getattr(torchvision.models, torchvision_net)(num_classes=classes).eval()
    state = fill({k: tuple(v.shape) for k, v in ref.state_dict().items()})
    ref.load_state_dict(state)
    net = NETWORKS.build({"name": name, "num_classes": classes}).eval()
    load_checkpoint(save_openood_ckpt(tmp_path / "best.ckpt", state, ddp), net)
    x = probe(64)
    with torch.no_grad():
        logits, feats = net(x, return_feature=True)
        want = ref(x)
        want_feats = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feats, want_feats, rtol=1e-4, atol=1e-4)
    assert net.get_fc_layer().weight.shape == (classes, feats.shape[1])


def test_a_checkpoint_of_another_architecture_is_one_line(tmp_path):
    shapes, _ = openood_resnet18_32x32_reference()
    path = save_openood_ckpt(tmp_path / "best.ckpt", fill(shapes), ddp=True)
    with pytest.raises(CheckpointError, match="does not fit network ResNet18_224x224") as err:
        load_checkpoint(path, NETWORKS.build({"name": "resnet18_224x224", "num_classes": 10}))
    assert "\n" not in str(err.value)
