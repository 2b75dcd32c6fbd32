"""The model factory: any timm architecture by name, with 14 sigmoid outputs.

Weights: ``none`` (random init), ``timm`` (timm's pretrained ImageNet weights, when the cluster can
reach the hub), or a path in the store (``store:models/densenet121.pth``) or an ``s3://`` URI holding
a state dict. With one input channel and pretrained weights, timm folds the stem's RGB filters
into one, so grayscale films use ImageNet features without tripling the input.
"""

from __future__ import annotations

import io
import pickle

import timm
import torch
from torch import nn

from jobs.data.labels import NUM_CLASSES
from jobs.errors import ConfigError
from jobs.spec.architectures import check_architecture
from jobs.store import Store, layout, open_store

# Grayscale normalisation: the mean and std of ImageNet's RGB statistics, for 1-channel input.
GRAY_MEAN, GRAY_STD = 0.449, 0.226


def _load_state_dict(weights: str, store: Store | None) -> dict:
    """The state dict at ``weights``. A missing object or one that is not a state dict is the user's
    to fix (a ConfigError: the run fails at once, no retry); a store that cannot be reached is not."""
    if weights.startswith("store:"):
        if store is None:
            raise ConfigError(f"weights {weights!r} need a store")
        source, key = store, layout.weights_key(weights)  # refuses store:../.. (checked at submit too)
    else:
        head, _, key = weights.rpartition("/")
        source = open_store(head)
    if not source.exists(key):
        raise ConfigError(
            f"training.weights {weights!r}: {source.url(key)} does not exist; upload the state dict there "
            "or fix training.weights"
        )
    try:
        state = torch.load(io.BytesIO(source.get_bytes(key)), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ConfigError(
            f"training.weights {weights!r}: {source.url(key)} is not a torch state dict "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); save one with torch.save(model.state_dict())"
        ) from None
    return state.get("model", state) if isinstance(state, dict) else state


def init_head_prior(model: nn.Module, prevalence: list[float] | None) -> None:
    """Zero the classifier's weights and set its bias to the log-odds of each class's prevalence.

    A randomly initialised head starts far from the label prior: on 14 rare labels its initial
    focal loss is 15-20x that of predicting the prior, and the first epochs go into shrinking the
    outputs instead of learning features. EfficientNet-B2 from scratch stayed at chance for three
    CPU epochs with timm's default head and learns within the first epoch with this one.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"training.head_init 'prior' needs a linear classifier; {type(model).__name__} has "
            f"{type(head).__name__}: set training.head_init to 'default'"
        )
    if prevalence is None:
        prevalence = [0.5] * head.out_features
    q = torch.tensor(prevalence, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.log(q / (1 - q)))


def create_model(
    name: str,
    *,
    in_chans: int = 1,
    weights: str = "none",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    store: Store | None = None,
    head_prior: list[float] | None = None,
) -> nn.Module:
    """A timm model with ``NUM_CLASSES`` outputs.

    Args:
        name: timm architecture name (``densenet121``, ``efficientnet_b2``, ...).
        in_chans: 1 for grayscale input, 3 to replicate the film into RGB.
        weights: ``none``, ``timm``, ``store:KEY`` or ``s3://bucket/key``.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, for architectures that have it.
        head_prior: per-class prevalence; when given, the classifier starts at the label prior
            (``init_head_prior``). A store checkpoint that carries a 14-output head overrides it.
    """
    check_architecture(name)
    kwargs = {"num_classes": NUM_CLASSES, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if weights == "timm":
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # no network, no weights for this name, hub refused
            raise ConfigError(
                f"could not load timm's pretrained weights for {name!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); set training.weights to 'none', "
                "or put a state dict in the store and use 'store:KEY'"
            ) from None
        if head_prior is not None:
            init_head_prior(model, head_prior)
        return model
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r} does not take these settings: {exc}") from None
    if head_prior is not None:
        init_head_prior(model, head_prior)
    if weights != "none":
        state = _load_state_dict(weights, store)
        own = model.state_dict()
        # The classifier of an ImageNet checkpoint has 1000 outputs: keep only tensors that fit.
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fitting:
            raise ConfigError(f"weights {weights!r}: no tensor matches {name!r}; is it a state dict of that model?")
        model.load_state_dict(fitting, strict=False)
    return model
