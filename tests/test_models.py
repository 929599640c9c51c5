"""Model registry: output shapes, uint8 input, self-contained normalisation, save/load round trip."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from labelnoise import models
from labelnoise.io import save_torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", [m for m in models.list_models() if m != "wrn56_10"])  # wrn56_10: too slow here
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_registry_shapes(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=7, in_channels=channels, image_size=size)
    x = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8)  # (B, C, H, W)
    model.train()
    assert model(x).shape == (2, 7)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_preact_resnet32_depth() -> None:
    model = models.create_model("preact_resnet32", num_classes=10, in_channels=3, image_size=32)
    net = model.net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 31  # stem + 3 stages x 5 blocks x 2 convs; + the linear head = 32 layers
    assert [stage[0].conv1.out_channels for stage in net.stages] == [16, 32, 64]
    assert all(len(stage) == 5 for stage in net.stages)


def test_cnn_layout() -> None:
    model = models.create_model("cnn", num_classes=10, in_channels=1, image_size=28)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.net.modules()) == 3
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.net.modules()) == 2
    linears = [m for m in model.net.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 256), (256, 10)]


def test_convpool_layout() -> None:
    """airbench's block: the second conv of each block runs at the pooled resolution."""
    model = models.create_model("convpool_small", num_classes=10, in_channels=3, image_size=32)
    sizes = []
    for m in model.net.features:
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: sizes.append((mod.out_channels, out.shape[-1])))
    model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert sizes == [(32, 32), (32, 16), (64, 16), (64, 8), (128, 8), (128, 4)]


def test_normalize_math() -> None:
    norm = models.Normalize([0.5, 0.25], [0.5, 2.0])
    x = torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    expected = (x.double() / 255 - torch.tensor([0.5, 0.25]).double().view(1, 2, 1, 1)) / torch.tensor(
        [0.5, 2.0]
    ).double().view(1, 2, 1, 1)
    torch.testing.assert_close(norm(x).double(), expected, atol=1e-5, rtol=1e-5)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert norm(cl).is_contiguous(memory_format=torch.channels_last)  # keeps the fast layout


def test_channel_stats_match_numpy() -> None:
    x = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    mean, std = models.channel_stats(x, chunk=7)
    arr = x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, arr.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, arr.std(axis=(0, 2, 3)), rtol=1e-6)
    _, std0 = models.channel_stats(torch.zeros(4, 1, 3, 3, dtype=torch.uint8))
    assert std0 == [1.0]  # constant channel: no division by zero


def test_normalisation_buffers_travel_in_state_dict() -> None:
    torch.manual_seed(0)
    a = models.create_model("cnn", num_classes=3, in_channels=1, image_size=8, mean=[0.3], std=[0.2])
    sd = a.state_dict()
    assert sd["normalize.mean"].flatten().tolist() == pytest.approx([0.3])
    assert sd["normalize.std"].flatten().tolist() == pytest.approx([0.2])
    b = models.create_model("cnn", num_classes=3, in_channels=1, image_size=8)  # default 0 / 1
    b.load_state_dict(sd)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_save_and_load_model_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    kwargs = dict(num_classes=4, in_channels=3, image_size=32, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25])
    model = models.create_model("preact_resnet32", **kwargs).eval()
    record = models.model_record(model, model_name="preact_resnet32", model_kwargs=kwargs, epoch=3, clean_acc=0.75,
                                 config={"student": {"lr": 0.1}, "seed": 0}, classes=["a", "b", "c", "d"])
    save_torch(tmp_path / "m.pt", record)
    loaded = models.load_model(tmp_path / "m.pt", "cpu")
    assert not loaded.training
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    stored = torch.load(tmp_path / "m.pt", weights_only=True)
    assert stored["epoch"] == 3 and stored["clean_acc"] == 0.75 and stored["num_classes"] == 4
    assert stored["classes"] == ["a", "b", "c", "d"]  # the model names its outputs
    with pytest.raises(ValueError, match="3 class names for a model of 4 classes"):
        models.model_record(model, model_name="preact_resnet32", model_kwargs=kwargs, epoch=3, clean_acc=0.75,
                            config={}, classes=["a", "b", "c"])
    assert stored["model_kwargs"]["pretrained"] is False  # loading never downloads


def test_unknown_model_and_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.create_model("vgg", num_classes=2, in_channels=1, image_size=8)
    with pytest.raises(ValueError, match="only resnet18"):
        models.create_model("cnn", num_classes=2, in_channels=1, image_size=8, pretrained=True)
    with pytest.raises(ValueError, match="one per channel"):
        models.create_model("cnn", num_classes=2, in_channels=3, image_size=8, mean=[0.5])


def test_pretrained_offline_is_one_clear_line(monkeypatch) -> None:
    from torchvision.models import _api

    def offline(url, *args, **kwargs):  # what torch.hub does without a network
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        models.create_model("resnet18", num_classes=10, in_channels=3, image_size=32, pretrained=True)
    message = str(info.value)
    assert "\n" not in message and "pretrained" in message and "train.pretrained=false" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback


def test_resnet18_pretrained_adapts_grey_input(monkeypatch) -> None:
    from torchvision.models import _api, resnet18

    torch.manual_seed(0)
    reference = resnet18(weights=None).state_dict()
    monkeypatch.setattr(_api, "load_state_dict_from_url", lambda url, *a, **k: reference)
    model = models.create_model("resnet18", num_classes=10, in_channels=1, image_size=28, pretrained=True)
    conv1 = model.net.conv1
    assert conv1.in_channels == 1 and conv1.stride == (1, 1) and conv1.kernel_size == (7, 7)
    torch.testing.assert_close(conv1.weight, reference["conv1.weight"].mean(dim=1, keepdim=True) * 3.0)
    torch.testing.assert_close(model.net.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    assert model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 10)
