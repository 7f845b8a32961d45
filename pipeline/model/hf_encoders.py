"""Hugging Face ``transformers`` models as encoders (model.hf), each from a local folder (``pipeline/hf_local.py``).
Each maps the same aligned input as the built-in encoder of its modality to (B, hidden):

    text   int64 (B, L), the folder tokenizer's ids + 1 (0: padding)  -> model -> masked mean of last_hidden_state
    image  uint8 (B, H, W, 3)   -> resized, normalised as preprocessor_config.json says (else ImageNet mean/std)
                                   -> model -> mean of last_hidden_state over tokens (or over space, for CNNs)
    audio  float32 (B, N) waveform at the model's sampling rate -> normalised per clip (wav2vec2's do_normalize)
                                   -> model -> mean of last_hidden_state over frames

then ``head``, a new Linear(model width, hidden). The model is ``backbone``: its weights are pretrained (they run at
train.lr x model.pretrained_lr_scale) and live in the classifier's state dict, so best.pt, init_from and predict
work as for the built-in encoders (predict needs the same folder: the model's layout comes from its config).

model.freeze: a frozen encoder is in eval mode, and the backbone then runs without autograd (feature extraction:
no gradient, no backward through it) while ``head`` still learns (``trainable_when_frozen``). The pooling ignores
the models' own poolers, and a frozen backbone has no gradients: DDP must look for unused parameters
(``ddp_options``).
"""

from __future__ import annotations

import abc

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.data.stages.tokenize import HF_SHIFT
from pipeline.hf_local import load_model, read_json
from pipeline.spec import JobSpec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class HFEncoder(nn.Module, abc.ABC):
    trainable_when_frozen = ("head",)  # submodules that train while model.freeze holds the encoder

    def __init__(self, folder: str, field: str, hidden: int):
        super().__init__()
        self.backbone = load_model(folder, field).train()  # from_pretrained returns eval mode; a new module trains
        config = self.backbone.config
        width = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]  # transformers; CNNs (ResNet)
        self.head = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        if feature_mask is not None:
            raise ValueError("device SpecAugment ops mask the built-in audio encoder's features, not model.hf.audio's")
        # Frozen (model.freeze) or evaluating: eval mode, so no autograd through the backbone.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone.training):
            pooled = self.pool(x)                                  # (B, width)
        return self.head(pooled)                                   # (B, hidden)

    @abc.abstractmethod
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output for ``x`` pooled to (B, width); each modality's subclass says how."""


class HFTextEncoder(HFEncoder):
    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens > 0                                          # (B, L): the tokenizer's attention mask
        attention = mask.clone()
        attention[:, 0] = True  # an absent text (all padding) attends to one position: no NaN
        # padding back to the model's pad id (RoBERTa-like models number positions from the non-pad tokens)
        ids = torch.where(mask, tokens - HF_SHIFT, self.backbone.config.pad_token_id or 0)
        out = self.backbone(input_ids=ids, attention_mask=attention.long()).last_hidden_state   # (B, L, width)
        keep = mask.unsqueeze(-1).to(out.dtype)
        return (out * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def _image_size(pre: dict, config) -> tuple[int, int] | None:
    size = pre.get("crop_size") or pre.get("size") or getattr(config, "image_size", None)
    if isinstance(size, dict):
        size = (size["height"], size["width"]) if "height" in size else size.get("shortest_edge")
    if isinstance(size, int):
        size = (size, size)
    return tuple(size) if size else None


class HFImageEncoder(HFEncoder):
    def __init__(self, folder: str, field: str, hidden: int):
        super().__init__(folder, field, hidden)
        pre = read_json(folder, "preprocessor_config.json")
        self.size = _image_size(pre, self.backbone.config)
        self.normalize = pre.get("do_normalize", True)
        for name, value in (("mean", pre.get("image_mean", IMAGENET_MEAN)), ("std", pre.get("image_std", IMAGENET_STD))):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def pool(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0              # (B, H, W, 3) uint8 -> (B, 3, H, W) in [0, 1]
        if self.size and tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.normalize:
            x = (x - self.mean) / self.std
        out = self.backbone(pixel_values=x).last_hidden_state      # (B, T, width) or CNNs' (B, width, h, w)
        return out.mean(1) if out.dim() == 3 else out.mean((2, 3))


class HFAudioEncoder(HFEncoder):
    def __init__(self, folder: str, field: str, hidden: int):
        super().__init__(folder, field, hidden)
        self.normalize = read_json(folder, "preprocessor_config.json").get("do_normalize", True)

    def pool(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.float()                                           # (B, N)
        if self.normalize:  # zero mean, unit variance per clip, as wav2vec2's feature extractor does
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        return self.backbone(input_values=x).last_hidden_state.mean(1)   # (B, frames, width) -> (B, width)


HF_ENCODERS = {"text": HFTextEncoder, "image": HFImageEncoder, "audio": HFAudioEncoder}


def build_hf_encoder(modality: str, folder: str, hidden: int) -> HFEncoder:
    return HF_ENCODERS[modality](folder, f"model.hf.{modality}", hidden)


def hf_weight_names(model: nn.Module) -> set[str]:
    """Names of the parameters loaded from model.hf folders (pretrained: model.pretrained_lr_scale applies)."""
    return {f"encoders.{m}.backbone.{name}" for m, encoder in getattr(model, "encoders", {}).items()
            if isinstance(encoder, HFEncoder) for name, _ in encoder.backbone.named_parameters()}


def ddp_options(spec: JobSpec) -> dict:
    """``prepare_model`` arguments: with model.hf, DDP finds each step's unused parameters (the models' own poolers,
    a frozen backbone) instead of waiting for their gradients forever."""
    return {"parallel_strategy_kwargs": {"find_unused_parameters": True}} if spec.model.hf.folders() else {}
