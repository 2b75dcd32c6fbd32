"""The model factory: names, outputs, weights from the store, and the prior-initialised head."""

import io
import math
import re

import pytest
import timm
import torch

from jobs.errors import ConfigError, StoreError
from jobs.spec.architectures import check_architecture
from jobs.store import LocalStore
from jobs.training.models import create_model, init_head_prior


def test_unknown_architecture_names_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown architecture 'densenet12'.*densenet121"):
        check_architecture("densenet12")


def test_fourteen_outputs_from_one_channel():
    model = create_model("test_resnet").eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 14)


def test_prior_head_starts_at_the_log_odds_of_the_prevalence():
    prevalence = [0.5, 0.1, 0.01, 0.0] + [0.2] * 10
    model = create_model("test_efficientnet", head_prior=prevalence).eval()
    logits = model(torch.randn(3, 1, 32, 32))
    expected = [math.log(q / (1 - q)) for q in [0.5, 0.1, 0.01, 1e-3]] + [math.log(0.25)] * 10
    # Whatever the image, the output is the prior: zero weights, bias at the log-odds (clipped at 1e-3).
    assert torch.allclose(logits, torch.tensor([expected] * 3), atol=1e-6)
    assert torch.allclose(torch.sigmoid(logits[0, :3]), torch.tensor([0.5, 0.1, 0.01]), atol=1e-6)


def test_default_head_is_not_the_prior():
    model = create_model("test_efficientnet").eval()
    logits = model(torch.randn(3, 1, 32, 32))
    assert not torch.allclose(logits[0], logits[1])


def test_prior_head_needs_a_linear_classifier():
    model = timm.create_model("test_resnet", num_classes=14)
    model.fc = torch.nn.Identity()
    with pytest.raises(ConfigError, match="head_init 'prior' needs a linear classifier.*set training.head_init"):
        init_head_prior(model, [0.1] * 14)


def test_store_weights_override_the_prior_head(tmp_path):
    source = create_model("test_resnet")
    buf = io.BytesIO()
    torch.save({"model": source.state_dict()}, buf)
    store = LocalStore(tmp_path)
    store.put_bytes("models/r.pt", buf.getvalue())
    model = create_model("test_resnet", weights="store:models/r.pt", store=store, head_prior=[0.1] * 14)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_store_weights_that_fit_nothing_are_refused(tmp_path):
    store = LocalStore(tmp_path)
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(3)}, buf)
    store.put_bytes("bad.pt", buf.getvalue())
    with pytest.raises(ConfigError, match="no tensor matches 'test_resnet'"):
        create_model("test_resnet", weights="store:bad.pt", store=store)


@pytest.mark.parametrize("key", ["../outside.pt", "../../store/../outside.pt", "/abs/outside.pt"])
def test_store_weights_outside_the_store_are_refused(tmp_path, key):
    source = create_model("test_resnet")
    buf = io.BytesIO()
    torch.save({"model": source.state_dict()}, buf)
    (tmp_path / "outside.pt").write_bytes(buf.getvalue())  # a loadable state dict, just outside the store
    store = LocalStore(tmp_path / "store")
    with pytest.raises(
        StoreError, match=rf"^training\.weights 'store:{re.escape(key)}': the key (has a '\.\.' segment|is absolute)"
    ):
        create_model("test_resnet", weights=f"store:{key}", store=store)


def test_missing_or_unreadable_weights_are_the_users_to_fix(tmp_path):
    """A ConfigError, so the worker fails the run on its first attempt with the fix in error.json."""
    store = LocalStore(tmp_path)
    with pytest.raises(ConfigError, match=r"^training\.weights .store:models/absent\.pt.: .*absent\.pt does not "):
        create_model("test_resnet", weights="store:models/absent.pt", store=store)
    store.put_bytes("models/garbage.pt", b"not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"is not a torch state dict \(.*\); save one with torch\.save"):
        create_model("test_resnet", weights="store:models/garbage.pt", store=store)
