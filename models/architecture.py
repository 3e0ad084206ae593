"""The base model: a channel-independent patch autoencoder with a bottleneck (torch).

Imported only by training and export code, never by the daemon.

Input ``window`` float32 ``[N, T, C]`` (standardised per device channel by the gateway).
Each channel series is processed alone (channel independence, as in PatchTST), so the
same weights serve any number of channels:

    [N, T, C] -> [N*C, P, patch]            split each series into P = T/patch patches
    patch_embed: Linear(patch, E)           per patch (shared across patches)
    flatten      [N*C, P*E]
    encoder.0: Linear(P*E, H) -> LayerNorm(encoder.1) -> GELU -> encoder.3: Linear(H, D)
                                            the bottleneck = embedding [N, C, D]
    decoder.0: Linear(D, H) -> LayerNorm(decoder.1) -> GELU -> decoder.3: Linear(H, P*E) -> GELU
    patch_head: Linear(E, patch)            per patch
    -> reconstruction [N, T, C]

No normalisation touches the input values (a per-window normalisation would hide level
shifts); LayerNorm sits only on hidden features; there is no BatchNorm, so LoRA training
moves no hidden statistics. The Linear layers have the stable names listed in
``LORA_TARGETS`` for peft.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

LORA_TARGETS: tuple[str, ...] = ("patch_embed", "encoder.0", "encoder.3", "decoder.0", "decoder.3", "patch_head")
"""Names of the nn.Linear modules peft may target (``target_modules``)."""


@dataclass(frozen=True)
class PatchAEConfig:
    """Architecture hyper-parameters (stored as ``config.json``)."""

    window_length: int = 32
    patch_length: int = 4
    patch_dim: int = 16
    hidden_dim: int = 64
    embedding_dim: int = 16
    architecture: str = "patch_autoencoder"

    def __post_init__(self) -> None:
        if self.window_length % self.patch_length:
            raise ValueError("window_length must be a multiple of patch_length")

    @property
    def n_patches(self) -> int:
        return self.window_length // self.patch_length

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: str | Path) -> PatchAEConfig:
        data = json.loads(Path(path).read_text())
        if data.get("architecture", "patch_autoencoder") != "patch_autoencoder":
            raise ValueError(f"{path}: not a patch_autoencoder config")
        return cls(**data)


class PatchAutoencoder(nn.Module):
    """Channel-independent patch autoencoder; ``forward(window) -> (reconstruction, embedding)``."""

    def __init__(self, config: PatchAEConfig) -> None:
        super().__init__()
        self.config = config
        flat = config.n_patches * config.patch_dim
        self.patch_embed = nn.Linear(config.patch_length, config.patch_dim)
        self.encoder = nn.Sequential(
            nn.Linear(flat, config.hidden_dim),
            nn.LayerNorm(config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.embedding_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.embedding_dim, config.hidden_dim),
            nn.LayerNorm(config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, flat),
            nn.GELU(),
        )
        self.patch_head = nn.Linear(config.patch_dim, config.patch_length)

    def encode_series(self, series: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` single-channel series -> embedding ``[B, D]``."""
        cfg = self.config
        b = series.shape[0]
        patches = series.reshape(b, cfg.n_patches, cfg.patch_length)
        h = torch.nn.functional.gelu(self.patch_embed(patches)).reshape(b, cfg.n_patches * cfg.patch_dim)
        return self.encoder(h)

    def decode_series(self, z: torch.Tensor) -> torch.Tensor:
        """Embedding ``[B, D]`` -> reconstruction ``[B, T]``."""
        cfg = self.config
        b = z.shape[0]
        h = self.decoder(z).reshape(b, cfg.n_patches, cfg.patch_dim)
        return self.patch_head(h).reshape(b, cfg.window_length)

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``window [N, T, C]`` -> ``(reconstruction [N, T, C], embedding [N, C, D])``."""
        n, t, c = window.shape
        series = window.permute(0, 2, 1).reshape(n * c, t)
        z = self.encode_series(series)
        rec = self.decode_series(z)
        reconstruction = rec.reshape(n, c, t).permute(0, 2, 1)
        embedding = z.reshape(n, c, self.config.embedding_dim)
        return reconstruction, embedding


def load_model(directory: str | Path) -> PatchAutoencoder:
    """Load ``config.json`` + ``model.safetensors`` from ``directory`` (eval mode)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    model = PatchAutoencoder(PatchAEConfig.from_file(directory / "config.json"))
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()


def save_model(model: PatchAutoencoder, directory: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(model.config.to_json())
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
