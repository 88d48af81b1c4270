"""TrialConfig: every knob of one trial, with the study's presets and the training recipes.

A trial is a flat dict (what Ray Tune passes). `TrialConfig.from_flat` expands `recipe` and
`preset` into fields, lets explicit keys override them, and validates the result. Invalid input
raises `ConfigError` whose message names the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vggbn.errors import ConfigError

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "synthetic")
DEFAULT_RECIPE = "strong"
# `augment: auto` turns crop + flip on where it is the dataset's standard augmentation and helps.
# On Fashion-MNIST (vgg_a_bn, width 0.25) it cost accuracy for at least 10 epochs (README figures).
AUTO_AUGMENT = {"cifar10": True, "cifar100": True, "fashion_mnist": False, "synthetic": False}
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "elu", "silu")


class TrialConfig(BaseModel):
    """One trial.

    Construction applies the recipe first (default `strong`), then the preset's flags, then the
    explicit keys, so `TrialConfig(**d)` and `TrialConfig.from_flat(d)` agree. The field defaults
    below are the base that recipes override (they are the study's values); see RECIPES.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              allow_inf_nan=False)

    # -- what is trained
    preset: str | None = Field(None, description="study row the flags came from (see `vggbn presets`)")
    recipe: Literal["seed", "strong"] = Field(DEFAULT_RECIPE, description="training recipe the "
                                              "defaults came from (see RECIPES)")
    seed: int = Field(0, ge=0, description="seed for weight init, shuffling, augmentation, dropout")
    # -- data
    dataset: Literal["cifar10", "cifar100", "fashion_mnist", "synthetic"] = Field(
        "cifar10", description="dataset name")
    data_dir: str | None = Field(None, description="absolute directory with/for the dataset files "
                                 "(default: $VGGBN_DATA_DIR or the user cache dir)")
    val_fraction: float = Field(0.0, ge=0.0, le=0.5, description="stratified share of the training "
                                "set held out as validation (0 = none)")
    train_subset: int | None = Field(None, ge=1, description="train on the first N images of a "
                                     "seeded permutation (None = all)")
    synthetic_size: int = Field(4096, ge=20, le=1_000_000, description="training images of the "
                                "synthetic dataset (test set: a quarter of it)")
    augment: bool = Field(False, description="random crop (pad 4) + horizontal flip, on the device; "
                          "'auto' = on for CIFAR-10/100, off for Fashion-MNIST and synthetic")
    normalize: Literal["half", "dataset"] = Field("half", description="'half': (x-0.5)/0.5 as the "
                                                  "study; 'dataset': per-channel mean/std")
    # -- model
    arch: Literal["vgg_a", "vgg_b", "vgg_d", "vgg_e", "vgg_light"] = Field(
        "vgg_a", description="conv layer list (VGG-A=11, B=13, D=16, E=19 layers; vgg_light)")
    width: float = Field(1.0, gt=0.0, le=8.0, description="multiplier of conv channels and "
                         "classifier hidden size")
    bn: bool = Field(False, description="BatchNorm in every conv layer")
    bn_position: Literal["before_activation", "after_activation"] = Field(
        "before_activation", description="where BatchNorm sits in a conv layer: conv-BN-act "
        "(Ioffe & Szegedy; the standard) or conv-act-BN (the study's BN + Dropout row)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="drop probability in the classifier "
                           "(0 = off)")
    dropout_position: Literal["after_hidden", "before_hidden"] = Field(
        "after_hidden", description="'after_hidden': Linear-act-Dropout for both hidden layers "
        "(torchvision's VGG); 'before_hidden': Dropout-Linear-act (the study's: drops the conv "
        "features and the first hidden layer's output)")
    residual: bool = Field(False, description="each conv becomes a two-conv residual block "
                           "(1x1 projection where channels change)")
    activation: Literal["relu", "leaky_relu", "gelu", "elu", "silu"] = Field(
        "relu", description="nonlinearity everywhere")
    leaky_slope: float = Field(0.01, ge=0.0, lt=1.0, description="negative slope of leaky_relu")
    init: Literal["xavier", "xavier_normal", "kaiming", "kaiming_fan_out", "default"] = Field(
        "xavier", description="conv/linear weights: 'xavier' = xavier_uniform_, 'xavier_normal', "
        "'kaiming' = kaiming_normal_ (fan_in, ReLU gain), 'kaiming_fan_out' = kaiming_normal_ "
        "(fan_out, gain sqrt 2); biases zero; 'default' = PyTorch's own (biases too)")
    # -- optimisation
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (Adam: beta1)")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD only)")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 penalty coefficient (coupled "
                                "for sgd/adam as the study's 'L2' row; decoupled for adamw)")
    schedule: Literal["constant", "cosine", "onecycle"] = Field(
        "constant", description="lr schedule after warm-up, per step")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear lr warm-up length in epochs")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    batch_size: int = Field(1024, ge=2, le=65536, description="training minibatch size (images)")
    eval_batch_size: int = Field(2048, ge=1, le=65536, description="evaluation chunk size (images)")
    epochs: int = Field(30, ge=1, le=10_000, description="training epochs")
    # -- execution
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                        description="auto = cuda, then mps, then cpu")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="autocast dtype; auto = bf16 where the device computes it natively")
    compile: bool = Field(False, description="torch.compile the model")
    cpu_threads: int = Field(0, ge=0, le=1024, description="torch threads (0 = leave torch's "
                             "default; Ray sets it to the trial's CPUs)")
    record_steps: bool = Field(False, description="keep every step's training loss")
    probe_every: int = Field(0, ge=0, description="Santurkar probes every N training steps (0 = off)")
    probe_etas: tuple[float, ...] = Field((0.5, 1.0, 2.0, 4.0), min_length=1, description="probe "
                                          "step sizes as multiples of the current learning rate")

    @field_validator("probe_etas")
    @classmethod
    def _positive_etas(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(e <= 0 for e in v):
            raise ValueError(f"every step-size multiple must be > 0 (got {list(v)})")
        return v

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        import os

        return None if v in (None, "") else os.path.abspath(os.path.expanduser(v))

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset{suggest(v, PRESETS)}; presets: {', '.join(PRESETS)}")
        return v

    # ------------------------------------------------------------------ construction
    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        """recipe < preset < explicit keys; the recipe's lr and warm-up; `augment: auto`.

        Idempotent: a complete config (e.g. `to_flat()` output) comes back unchanged.
        """
        if not isinstance(data, dict):
            return data
        recipe = data.get("recipe", DEFAULT_RECIPE)
        if recipe not in RECIPES:  # reported by the field's validation
            return data
        merged: dict[str, Any] = dict(RECIPES[recipe]["fields"])
        preset = data.get("preset")
        if isinstance(preset, str) and preset in PRESETS:
            merged.update(PRESETS[preset]["flags"])
            if recipe == "seed":  # the study's per-class init is part of its training setup
                merged["init"] = PRESETS[preset]["seed_init"]
        merged.update(data)
        if "lr" not in merged:  # the recipe's lr for the optimizer the merge ended with
            opt = merged.get("optimizer", cls.model_fields["optimizer"].default)
            merged["lr"] = RECIPES[recipe]["lr"].get(opt, cls.model_fields["lr"].default)
        frac = RECIPES[recipe].get("warmup_fraction")
        if frac is not None and "warmup_epochs" not in merged:  # nothing set it: scale with the run
            try:  # an invalid `epochs` is left to the field's validation to report
                epochs = float(merged.get("epochs", cls.model_fields["epochs"].default))
            except (TypeError, ValueError):
                epochs = 0.0
            if epochs > 0:
                merged["warmup_epochs"] = round(frac * epochs, 6)
        if isinstance(merged.get("augment"), str) and merged["augment"].strip().lower() == "auto":
            dataset = merged.get("dataset", cls.model_fields["dataset"].default)
            if dataset in AUTO_AUGMENT:  # an unknown dataset is reported by its own validation
                merged["augment"] = AUTO_AUGMENT[dataset]
        return merged

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> "TrialConfig":
        """A resolved config read back (a trial's vggbn-config.json, a checkpoint, an export row).

        It was complete when written, so a key it lacks is a field added since, and the field's
        default is what the trial trained with (the defaults of added fields are the layouts that
        existed before them). Unlike `from_flat`, today's preset flags never fill it in.
        """
        return cls.from_flat({**{k: f.default for k, f in cls.model_fields.items()
                                 if k not in stored}, **stored})

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "TrialConfig":
        """Validate a flat dict: recipe < preset < explicit keys. Raises ConfigError."""
        flat = dict(flat)
        unknown = [k for k in flat if k not in cls.model_fields]
        if unknown:
            k = unknown[0]
            hint = suggest(k, cls.model_fields) or f" (valid keys: {', '.join(cls.model_fields)})"
            raise ConfigError(f"unknown key '{k}'{hint}", unknown_key=k)
        recipe = flat.get("recipe", DEFAULT_RECIPE)
        if recipe not in RECIPES:
            raise ConfigError(f"recipe={recipe!r} is invalid: unknown recipe{suggest(str(recipe), RECIPES)}; "
                              f"recipes: {', '.join(RECIPES)}")
        preset = flat.get("preset")
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"preset={preset!r} is invalid: unknown preset{suggest(str(preset), PRESETS)}; "
                              f"presets: {', '.join(PRESETS)}")
        try:  # `_expand` applies the recipe and the preset
            return cls.model_validate(flat)
        except ValidationError as e:
            first = e.errors()[0] if e.errors() else {}
            extra = first.get("type") == "extra_forbidden"
            unknown = (".".join(map(str, first["loc"])) or "<config>") if extra else None
            raise ConfigError(format_validation_error(e, cls), unknown_key=unknown) from None

    def to_flat(self) -> dict[str, Any]:
        return self.model_dump()

    def describe(self) -> str:
        """How it trains, in one line (what the recipe filled in)."""
        return (f"{self.optimizer} lr {self.lr:g}, batch {self.batch_size}, {self.epochs} epochs, "
                f"{self.schedule}, augment {'on' if self.augment else 'off'}, init {self.init}, "
                f"precision {self.precision}")

    def variant(self) -> dict[str, Any]:
        """The config without its seed: trials with equal variants differ only by seed."""
        d = self.model_dump()
        d.pop("seed")
        return d


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_validation_error(e: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: 'key=value is invalid: what is allowed (field description)'."""
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<config>"
        field = model.model_fields.get(str(err["loc"][0])) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'{suggest(key, model.model_fields)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        desc = f" [{key}: {field.description}]" if field is not None and field.description else ""
        lines.append(f"{key}={err.get('input')!r} is invalid: {msg}{desc}")
    return "; ".join(lines)


# ---------------------------------------------------------------------- presets (the study's rows)
# Flags only: one builder makes every row, so a row cannot silently train another row's model.
# A preset carries what its row IS: structure, activation and its slope (under every recipe), and
# `seed_init`, the init the study's class drew, which only the `seed` recipe reads (init is part of
# how a model is trained: `strong` keeps its own; an explicit `init` wins over both). The study's
# classes (its models/vgg.py): VGG_A and VGG_A_BatchNorm init xavier_normal_; VGG_A_LeakyReLU
# kaiming_normal_(mode="fan_out", nonlinearity="leaky_relu"); the Light, Dropout and Res classes
# keep PyTorch's default init. tests/test_study_models.py pins each row to that description.
PRESETS: dict[str, dict[str, Any]] = {
    "vgg_a": dict(section="Network structure", label="VGG_A",
                  flags=dict(arch="vgg_a"), seed_init="xavier_normal"),
    "vgg_a_bn": dict(section="Network structure", label="VGG_BatchNorm",
                     flags=dict(arch="vgg_a", bn=True), seed_init="xavier_normal"),
    "vgg_a_dropout_bn": dict(section="Network structure", label="VGG_BatchNorm + Dropout",
                             flags=dict(arch="vgg_a", bn=True, bn_position="after_activation",
                                        dropout=0.5, dropout_position="before_hidden"),
                             seed_init="default"),
    "vgg_light": dict(section="Network structure", label="VGG_Light",
                      flags=dict(arch="vgg_light"), seed_init="default"),
    "vgg_a_dropout_bn_res": dict(section="Network structure", label="VGG_BatchNorm + Dropout + Res",
                                 flags=dict(arch="vgg_a", bn=True, dropout=0.5,
                                            dropout_position="before_hidden", residual=True),
                                 seed_init="default"),
    "vgg_a_leaky_relu": dict(section="Network structure", label="VGG_A + LeakyReLU",
                             flags=dict(arch="vgg_a", activation="leaky_relu", leaky_slope=0.1),
                             seed_init="kaiming_fan_out"),
    "vgg_a_l2": dict(section="Loss function", label="VGG_A + L2 (1e-4)",
                     flags=dict(arch="vgg_a", weight_decay=1e-4), seed_init="xavier_normal"),
    "vgg_a_bn_sgd": dict(section="Optimizer", label="VGG_BatchNorm + SGD (momentum 0.9)",
                         flags=dict(arch="vgg_a", bn=True, optimizer="sgd", momentum=0.9),
                         seed_init="xavier_normal"),
}

# ---------------------------------------------------------------------- recipes (training setups)
# `lr` is per optimizer, used unless the trial sets lr itself.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": dict(
        description="the study's train.py: Adam 1e-3 (SGD 1e-3, momentum 0.9), batch 1024, 30 "
                    "epochs, no augmentation, (x-0.5)/0.5 inputs, the study's per-class init "
                    "(xavier_normal without a preset), fp32",
        fields=dict(recipe="seed", optimizer="adam", batch_size=1024, epochs=30, augment=False,
                    normalize="half", init="xavier_normal", schedule="constant", warmup_epochs=0.0,
                    label_smoothing=0.0, precision="fp32", nesterov=False),
        lr={"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-3},
    ),
    "strong": dict(
        description="SGD Nesterov 0.9, lr 0.1, batch 128, warm-up over 5% of the "
                    "epochs (2 of 40) then one-cycle decay, weight decay 5e-4, label smoothing 0.1, "
                    "crop+flip (augment=auto: CIFAR only), dataset mean/std, kaiming init, bf16 "
                    "where native; aims at >=92.5% CIFAR-10 for vgg_a_bn in 40 epochs",
        fields=dict(recipe="strong", optimizer="sgd", momentum=0.9, nesterov=True, batch_size=128,
                    epochs=40, augment="auto", normalize="dataset", init="kaiming",
                    schedule="onecycle", label_smoothing=0.1,
                    weight_decay=5e-4, precision="auto"),
        lr={"sgd": 0.1, "adam": 2e-3, "adamw": 2e-3},
        warmup_fraction=0.05,  # warm-up scales with the run: 2 of 40 epochs, 0.15 of 3
    ),
}


def earlier_preset_with_same_config(cfg: TrialConfig, flat: dict[str, Any]) -> str | None:
    """An earlier row of the study's table that, with the same keys, resolves to cfg's very config
    (e.g. vgg_a_bn for vgg_a_bn_sgd under the SGD recipe; vgg_a_bn itself gets no note)."""
    if cfg.preset is None:
        return None
    mine = {**cfg.to_flat(), "preset": None}
    for name in list(PRESETS)[:list(PRESETS).index(cfg.preset)]:
        if {**TrialConfig.from_flat({**flat, "preset": name}).to_flat(),
                                   "preset": None} == mine:
            return name
    return None
