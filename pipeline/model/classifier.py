"""The model: per-modality encoders -> fusion -> logits, with optional modality dropout while training."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.model.augment import FEATURE_MASK, DeviceAugment
from pipeline.model.encoders import AudioEncoder, ImageEncoder, TextEncoder
from pipeline.model.fusion import UNIMODAL, build_fusion
from pipeline.spec import JobSpec
from pipeline.tasks import label_columns


def model_modalities(spec: JobSpec) -> list[str]:
    """The modalities the model uses: the enabled ones, or the single one of a unimodal baseline."""
    only = UNIMODAL.get(spec.model.fusion)
    if only:
        if only not in spec.modalities.enabled():
            raise ValueError(f"model.fusion={spec.model.fusion} needs modalities.{only}, which is disabled")
        return [only]
    return spec.modalities.enabled()


def build_encoders(spec: JobSpec, modalities: list[str]) -> nn.ModuleDict:
    """One encoder per modality, sized by the model section: the classifier's, and pretraining's (the same names,
    so pretrained weights load into a classifier by name)."""
    h, mods = spec.model.hidden, spec.modalities
    encoders = {}
    hf = spec.model.hf.folders()
    if hf.keys() & set(modalities):  # model.hf: a Hugging Face model replaces the built-in encoder
        from pipeline.model.hf_encoders import build_hf_encoder

        encoders = {m: build_hf_encoder(m, hf[m], h) for m in modalities if m in hf}
    if "image" in modalities and "image" not in encoders:
        encoders["image"] = ImageEncoder(h, spec.model.image_width)
    if "text" in modalities and "text" not in encoders:
        encoders["text"] = TextEncoder(h, mods.text.vocab_size, mods.text.max_tokens, spec.model.text_encoder)
    if "audio" in modalities and "audio" not in encoders:
        encoders["audio"] = AudioEncoder(h, mods.audio.sample_rate, spec.model.audio_width,
                                         spec.model.spec_augment, vtlp=spec.model.vtlp,
                                         norm=spec.model.audio_norm,
                                         band_batchnorm=spec.model.audio_band_batchnorm)
    return nn.ModuleDict({m: encoders[m] for m in modalities})  # in the modalities' order


def output_width(spec: JobSpec, num_classes: int) -> int:
    """Logits per sample: the primary task's ``num_classes``, then each further task's (label.tasks). The heads
    are blocks of the fusion's last layer on its shared hidden features (``pipeline.tasks.split_logits``); with
    one task, the model is exactly the single-task one (checkpoints load unchanged)."""
    return num_classes + sum(len(t.classes) for t in spec.label.tasks.values())


class MultimodalClassifier(nn.Module):
    def __init__(self, spec: JobSpec, num_classes: int):
        """``num_classes``: the primary task's; the logits hold every task's (``output_width``)."""
        super().__init__()
        num_classes = output_width(spec, num_classes)
        self.modalities = model_modalities(spec)
        self.encoders = build_encoders(spec, self.modalities)
        fusion = "concat" if spec.model.fusion in UNIMODAL else spec.model.fusion
        self.fusion = build_fusion(fusion, self.modalities, spec.model.hidden, num_classes, spec.model.dropout)
        self._fusion_args = (fusion, self.modalities, spec.model.hidden, num_classes, spec.model.dropout)
        self.modality_dropout = spec.model.modality_dropout
        self.frozen: set[str] = set()  # modalities whose encoders stay in eval mode (model.freeze; set_frozen)

    def head_names(self) -> frozenset[str]:
        """The tensors whose shape follows the logits width (the task heads, wherever a fusion keeps them): those
        that differ from a fusion built one logit wider. The random state is left as it was."""
        fusion, modalities, hidden, width, dropout = self._fusion_args
        with torch.random.fork_rng(devices=[]):
            wider = build_fusion(fusion, modalities, hidden, width + 1, dropout).state_dict()
        return frozenset(f"fusion.{k}" for k, v in self.fusion.state_dict().items() if wider[k].shape != v.shape)

    def set_frozen(self, modalities) -> None:
        """Freeze these modalities' encoders as feature extractors: eval mode, so BatchNorm statistics and dropout
        stay fixed. (Their weights stay fixed because their optimizer group's learning rate is 0: see
        ``train.optim.param_groups``; requires_grad stays on so DDP keeps syncing them once they unfreeze.)"""
        self.frozen = {m for m in modalities if m in self.encoders}
        self.train(self.training)

    def train(self, mode: bool = True) -> "MultimodalClassifier":
        super().train(mode)
        for m in getattr(self, "frozen", ()):
            self.encoders[m].eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        present = {m: batch[f"present_{m}"].bool() for m in self.modalities}
        if self.training and self.modality_dropout > 0 and len(self.modalities) > 1:
            present = self._drop_modalities(present)
        features = {m: self._encode(m, batch) for m in self.modalities}
        return self.fusion(features, present)

    def _encode(self, modality: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if modality == "audio" and FEATURE_MASK in batch:  # SpecAugment masks from device augmentation
            return self.encoders[modality](batch[modality], feature_mask=batch[FEATURE_MASK])
        return self.encoders[modality](batch[modality])

    def _drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hide each present modality with probability p, never all of a sample's modalities."""
        stacked = torch.stack([present[m] for m in self.modalities], 1)                  # (B, M)
        keep = torch.rand(stacked.shape, device=stacked.device) >= self.modality_dropout
        dropped = stacked & keep
        # where everything was hidden, keep one of the sample's present modalities, chosen at random
        pick = torch.rand(stacked.shape, device=stacked.device).masked_fill(~stacked, -1.0).argmax(1)
        rescue = torch.nn.functional.one_hot(pick, len(self.modalities)).bool() & stacked
        empty = (dropped.sum(1) == 0).unsqueeze(1)
        dropped = torch.where(empty, rescue, dropped)
        return {m: dropped[:, i] for i, m in enumerate(self.modalities)}


def input_columns(spec: JobSpec) -> list[str]:
    """The model's inputs and every task's label column (label, label_<task>)."""
    mods = model_modalities(spec)
    return [*mods, *(f"present_{m}" for m in mods), *label_columns(spec)]


def train_columns(spec: JobSpec) -> list[str]:
    """What training reads of the train split: the model's inputs, and the per-row seeds device augmentation
    draws from (augment.backend: device)."""
    extra = DeviceAugment.columns if spec.augment.runs_on("device") else []
    return [*input_columns(spec), *extra]
