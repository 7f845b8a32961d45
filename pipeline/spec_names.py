"""The names a job spec may use, as plain tables: checking a spec's names needs neither torch nor the augmentation
libraries (``mmpipe show-spec`` answers in about a second). The sources of truth stay where they are — the fusion
registry (``model/fusion.py``), ``train/optim.OPTIMIZERS``, ``model/losses.LOSSES`` and the libraries' transform
classes; ``tests/spec/test_spec_names.py`` fails when a table here differs from them (and prints the new one).
"""

FUSIONS = (
    "concat", "sum", "gated", "attention", "tensor", "low_rank", "film", "late", "image_only", "text_only",
    "audio_only",
)
OPTIMIZERS = (
    "sgd", "momentum", "nesterov", "adam", "adamw", "nadam", "adadelta", "rmsprop",
)
LOSSES = (
    "ce", "weighted_ce", "focal", "logit_adjusted",
)

# augment.backend: cpu — the class names the data path looks up (pipeline/data/stages/augment/<role>.py)
TRANSFORMS = {
    "image": (
        "AdditiveNoise", "AdvancedBlur", "Affine", "AtLeastOneBBoxRandomCrop", "AutoContrast", "BBoxSafeRandomCrop",
        "BasicTransform", "Blur", "CLAHE", "CenterCrop", "CenterCrop3D", "ChannelDropout", "ChannelShuffle",
        "ChromaticAberration", "CoarseDropout", "CoarseDropout3D", "ColorJitter", "ConstrainedCoarseDropout",
        "Crop", "CropAndPad", "CropNonEmptyMaskIfExists", "CubicSymmetry", "D4", "Defocus", "Downscale",
        "DualTransform", "ElasticTransform", "Emboss", "Equalize", "Erasing", "FDA", "FancyPCA", "FrequencyMasking",
        "FromFloat", "GaussNoise", "GaussianBlur", "GlassBlur", "GridDistortion", "GridDropout",
        "GridElasticDeform", "HEStain", "HistogramMatching", "HorizontalFlip", "HueSaturationValue", "ISONoise",
        "Illumination", "ImageCompression", "ImageOnlyTransform", "InvertImg", "Lambda", "LongestMaxSize",
        "MaskDropout", "MedianBlur", "Morphological", "Mosaic", "MotionBlur", "MultiplicativeNoise", "NoOp",
        "Normalize", "OpticalDistortion", "OverlayElements", "Pad", "Pad3D", "PadIfNeeded", "PadIfNeeded3D",
        "Perspective", "PiecewiseAffine", "PixelDistributionAdaptation", "PixelDropout", "PlanckianJitter",
        "PlasmaBrightnessContrast", "PlasmaShadow", "Posterize", "RGBShift", "RandomBrightnessContrast",
        "RandomCrop", "RandomCrop3D", "RandomCropFromBorders", "RandomCropNearBBox", "RandomFog", "RandomGamma",
        "RandomGravel", "RandomGridShuffle", "RandomRain", "RandomResizedCrop", "RandomRotate90", "RandomScale",
        "RandomShadow", "RandomSizedBBoxSafeCrop", "RandomSizedCrop", "RandomSnow", "RandomSunFlare",
        "RandomToneCurve", "Resize", "RingingOvershoot", "Rotate", "SafeRotate", "SaltAndPepper", "Sharpen",
        "ShiftScaleRotate", "ShotNoise", "SmallestMaxSize", "Solarize", "Spatter", "SquareSymmetry", "Superpixels",
        "TextImage", "ThinPlateSpline", "TimeMasking", "TimeReverse", "ToFloat", "ToGray", "ToRGB", "ToSepia",
        "ToTensor3D", "ToTensorV2", "Transform3D", "Transpose", "UnsharpMask", "VerticalFlip", "XYMasking",
        "ZoomBlur",
    ),  # albumentations
    "text": (
        "AntonymAug", "BackTranslationAug", "ContextualWordEmbsAug", "KeyboardAug", "OcrAug", "RandomCharAug",
        "RandomWordAug", "ReservedAug", "SpellingAug", "SplitAug", "SynonymAug", "TfIdfAug", "WordEmbsAug",
    ),  # nlpaug
    "audio": (
        "AddBackgroundNoise", "AddColorNoise", "AddGaussianNoise", "AddGaussianSNR", "AddShortNoises",
        "AdjustDuration", "AirAbsorption", "Aliasing", "ApplyImpulseResponse", "BandPassFilter", "BandStopFilter",
        "BitCrush", "Clip", "ClippingDistortion", "Gain", "GainTransition", "HighPassFilter", "HighShelfFilter",
        "Lambda", "Limiter", "LoudnessNormalization", "LowPassFilter", "LowShelfFilter", "Mp3Compression",
        "Normalize", "Padding", "PeakingFilter", "PitchShift", "PolarityInversion", "RepeatPart", "Resample",
        "Reverse", "RoomSimulator", "SevenBandParametricEQ", "Shift", "TanhDistortion", "TimeMask", "TimeStretch",
        "Trim",
    ),  # audiomentations
}
LIBRARIES = {"image": "albumentations", "text": "nlpaug", "audio": "audiomentations"}
