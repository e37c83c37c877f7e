"""Model SPEC -> encoder: each implementation named by its module path and imported only
when asked for, so no encoder module imports another.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from typing import TYPE_CHECKING

from tda.attribution.encoders.base import ConceptEncoder, EncoderError

if TYPE_CHECKING:
    pass

__all__ = ["MODEL_SCHEMES", "check_scheme", "load_encoder", "model_tokenizer_spec"]

# Each encoder's loader by module path: the registry imports an implementation only when a
# SPEC asks for it (torch, safetensors or steerling load then), and no implementation
# module is imported by this one, so encoders/ has no import cycle.
IMPLEMENTATIONS = {
    "builtin": "tda.attribution.encoders.builtin.model:load_builtin",
    "steerling": "tda.attribution.encoders.steerling:load_steerling",
}


# What a SPEC may start with: ``builtin:`` or ``steerling:``; anything else is a
# directory or an fsspec URL (``gs://...``, ``memory://...``).
MODEL_SCHEMES = tuple(IMPLEMENTATIONS)
# "name:" at the start of a SPEC that is not a URL ("gs://") nor a Windows drive ("C:\").
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(?!//)")


def check_scheme(spec: str) -> None:
    """Refuse a SPEC that starts with a scheme tda does not know (``foo:bar``), with one
    line naming it and the known ones, instead of looking for ``foo:bar/config.json``.
    A directory that exists under that very name is still a model directory."""
    match = _SCHEME.match(spec)
    if match and match.group(1) not in MODEL_SCHEMES and not os.path.exists(spec):
        known = ", ".join(f"{name}:" for name in MODEL_SCHEMES)
        raise EncoderError(
            f"--model {spec}: unknown model scheme {match.group(1)!r}; known: {known} "
            f"(builtin:DIR, steerling:ID_OR_PATH), or a model directory or URL"
        )


def _implementation(name: str):
    """Registry name -> its loader function (imported now)."""
    module, _, function = IMPLEMENTATIONS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def load_encoder(
    spec: str, device: str = "auto", trust_remote_code: bool = False
) -> ConceptEncoder:
    """Model SPEC -> encoder on ``device``.

    * ``builtin:DIR`` or a bare ``DIR`` holding one of ours (``config.json`` of kind
      ``tda.builtin``); DIR may be any fsspec URL;
    * ``steerling:ID_OR_PATH``: Guide Labs' Steerling (local directory with config.json +
      safetensors, or a Hugging Face id when the hub is reachable).

    Weights are read with safetensors; nothing is unpickled.
    """
    if not spec:
        raise EncoderError("--model SPEC is required (builtin:DIR or steerling:ID_OR_PATH)")
    check_scheme(spec)
    if spec.startswith("steerling:"):
        return _implementation("steerling")(spec, device, trust_remote_code)
    location = spec[len("builtin:") :] if spec.startswith("builtin:") else spec
    kind = _config_kind(location)
    if kind == "tda.builtin":
        return _implementation("builtin")(spec, location, device)
    if kind == "steerling":
        raise EncoderError(
            f"{location} holds a Steerling checkpoint; pass --model steerling:{location}"
        )
    raise EncoderError(
        f"{spec} is not a model SPEC tda knows: give builtin:DIR (made by `tda model train`) "
        f"or steerling:ID_OR_PATH"
    )


def model_tokenizer_spec(spec: str) -> str:
    """Model SPEC -> the tokenizer SPEC its chunks must be cut with, without loading weights:
    the model directory when it ships a ``tokenizer.json`` (builtin models, test
    Steerlings), else Steerling's own ``tiktoken:cl100k_base``."""
    import fsspec

    check_scheme(spec)
    steerling = spec.startswith("steerling:")
    location = spec.split(":", 1)[1] if steerling or spec.startswith("builtin:") else spec
    try:
        fs, path = fsspec.core.url_to_fs(location)
        ships_one = fs.exists(path.rstrip("/") + "/tokenizer.json")
    except (OSError, ValueError):
        ships_one = False
    if ships_one:
        return location
    if steerling:
        return "tiktoken:cl100k_base"
    raise EncoderError(f"{location} holds no tokenizer.json; pass --tokenizer SPEC")


def _config_kind(location: str) -> str | None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location)
        with fs.open(path.rstrip("/") + "/config.json", "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise EncoderError(f"model not found: {location} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read the model config at {location}: {exc}") from exc
    if not isinstance(data, dict):
        return None
    if data.get("kind") == "tda.builtin":
        return "tda.builtin"
    if data.get("interpretable") or data.get("model_type") == "causal_diffusion":
        return "steerling"
    return None
