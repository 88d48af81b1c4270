import pytest

from vggbn.config import DATASETS, PRESETS, RECIPES, ConfigError, TrialConfig

BAD = [  # (flat config, words the message must contain)
    ({"dropout": 1.5}, ["dropout", "1.5"]),
    ({"dropout": -0.1}, ["dropout", "-0.1"]),
    ({"width": 0}, ["width", "0"]),
    ({"width": -1}, ["width"]),
    ({"lr": -1}, ["lr", "-1"]),
    ({"lr": 0}, ["lr"]),
    ({"lr": float("nan")}, ["lr", "finite"]),
    ({"activation": "tanh"}, ["activation", "tanh", "leaky_relu"]),
    ({"dataset": "imagenet"}, ["dataset", "imagenet", "cifar10"]),
    ({"optimizer": "rmsprop"}, ["optimizer", "rmsprop", "adamw"]),
    ({"optimiser": "sgd"}, ["optimiser", "did you mean 'optimizer'"]),
    ({"dropuot": 0.5}, ["dropuot", "did you mean 'dropout'"]),
    ({"batch_size": 0}, ["batch_size"]),
    ({"batch_size": "big"}, ["batch_size", "big"]),
    ({"epochs": 0}, ["epochs"]),
    ({"val_fraction": 0.9}, ["val_fraction", "0.9"]),
    ({"momentum": 1.0}, ["momentum"]),
    ({"label_smoothing": 1.0}, ["label_smoothing"]),
    ({"schedule": "step"}, ["schedule", "onecycle"]),
    ({"device": "tpu"}, ["device", "tpu"]),
    ({"preset": "vgg_a_bnn"}, ["preset", "did you mean 'vgg_a_bn'"]),
    ({"recipe": "fast"}, ["recipe", "fast", "strong"]),
    ({"arch": "resnet18"}, ["arch", "resnet18"]),
    ({"train_subset": 0}, ["train_subset"]),
    ({"precision": "fp16"}, ["precision", "fp16"]),
    ({"seed": -3}, ["seed"]),
]


@pytest.mark.parametrize("flat,words", BAD, ids=[next(iter(b[0])) + str(i) for i, b in enumerate(BAD)])
def test_bad_config_is_rejected_with_key_and_value(flat, words):
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_flat(flat)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_at_least_15_bad_configs():
    assert len(BAD) >= 15


def test_preset_expands_and_explicit_keys_override():
    c = TrialConfig.from_flat({"preset": "vgg_a_dropout_bn"})
    assert (c.bn, c.dropout, c.residual, c.arch) == (True, 0.5, False, "vgg_a")
    c = TrialConfig.from_flat({"preset": "vgg_a_dropout_bn", "dropout": 0.2, "bn": False})
    assert (c.bn, c.dropout) == (False, 0.2)
    assert TrialConfig.from_flat({"preset": "vgg_a_leaky_relu"}).activation == "leaky_relu"
    assert TrialConfig.from_flat({"preset": "vgg_a_l2"}).weight_decay == 1e-4
    sgd = TrialConfig.from_flat({"preset": "vgg_a_bn_sgd", "recipe": "seed"})
    assert (sgd.optimizer, sgd.momentum, sgd.lr) == ("sgd", 0.9, RECIPES["seed"]["lr"]["sgd"])
    # the study's train.py: one learning_rate = 0.001 for every optimizer, SGD with momentum 0.9
    assert (sgd.lr, sgd.nesterov) == (1e-3, False)


def test_a_preset_carries_its_row_a_recipe_how_it_trains():
    """Structure and slope follow the preset under every recipe; the study's per-class init only
    under `seed`; an explicit init wins over both."""
    for recipe in ("seed", "strong"):
        d = TrialConfig.from_flat({"preset": "vgg_a_dropout_bn", "recipe": recipe})
        assert (d.bn_position, d.dropout_position, d.dropout) == ("after_activation", "before_hidden", 0.5)
        leaky = TrialConfig.from_flat({"preset": "vgg_a_leaky_relu", "recipe": recipe})
        assert (leaky.activation, leaky.leaky_slope) == ("leaky_relu", 0.1)
    seed_init = {p: TrialConfig.from_flat({"preset": p, "recipe": "seed"}).init for p in PRESETS}
    assert seed_init == {"vgg_a": "xavier_normal", "vgg_a_bn": "xavier_normal",
                         "vgg_a_dropout_bn": "default", "vgg_light": "default",
                         "vgg_a_dropout_bn_res": "default", "vgg_a_leaky_relu": "kaiming_fan_out",
                         "vgg_a_l2": "xavier_normal", "vgg_a_bn_sgd": "xavier_normal"}
    assert {TrialConfig.from_flat({"preset": p, "recipe": "strong"}).init for p in PRESETS} == {"kaiming"}
    for recipe in ("seed", "strong"):
        assert TrialConfig.from_flat({"preset": "vgg_light", "recipe": recipe, "init": "xavier"}).init == "xavier"
    # without a preset the flags keep the standard layouts, and seed's init is VGG_A's
    plain = TrialConfig.from_flat({"recipe": "seed", "bn": True, "dropout": 0.5})
    assert (plain.bn_position, plain.dropout_position, plain.init) == (
        "before_activation", "after_hidden", "xavier_normal")


def test_a_stored_config_keeps_its_meaning():
    """A config written before bn_position/dropout_position existed trained the standard layouts,
    even for the preset that now carries the study's: read back, it must still say so."""
    old = TrialConfig.from_flat({"preset": "vgg_a_dropout_bn", "recipe": "seed"}).to_flat()
    del old["bn_position"], old["dropout_position"]
    old["init"] = "xavier"  # what the seed recipe drew then
    back = TrialConfig.from_stored(old)
    assert (back.bn_position, back.dropout_position, back.init) == (
        "before_activation", "after_hidden", "xavier")
    assert TrialConfig.from_flat(old).bn_position == "after_activation"  # what from_flat would do
    new = TrialConfig.from_flat({"preset": "vgg_a_dropout_bn", "recipe": "seed"})
    assert TrialConfig.from_stored(new.to_flat()) == new


def test_recipes():
    seed = TrialConfig.from_flat({"recipe": "seed"})
    assert (seed.optimizer, seed.lr, seed.batch_size, seed.epochs, seed.augment, seed.normalize,
            seed.init, seed.precision) == ("adam", 1e-3, 1024, 30, False, "half", "xavier_normal", "fp32")
    strong = TrialConfig.from_flat({"recipe": "strong", "preset": "vgg_a_bn"})
    assert (strong.optimizer, strong.nesterov, strong.lr, strong.batch_size, strong.label_smoothing,
            strong.augment, strong.normalize, strong.precision, strong.bn) == (
        "sgd", True, 0.1, 128, 0.1, True, "dataset", "auto", True)
    # `strong` is the default, for from_flat and for the constructor alike
    assert TrialConfig.from_flat({"preset": "vgg_a_bn"}) == strong == TrialConfig(preset="vgg_a_bn")
    assert TrialConfig() == TrialConfig.from_flat({}) and TrialConfig().recipe == "strong"
    assert strong.warmup_epochs > 0 and strong.schedule in ("cosine", "onecycle")
    assert strong.epochs <= 40
    # an explicit lr beats the recipe's per-optimizer lr; a changed optimizer gets its own lr
    assert TrialConfig.from_flat({"recipe": "strong", "lr": 0.05}).lr == 0.05
    assert TrialConfig.from_flat({"recipe": "strong", "optimizer": "adam"}).lr == RECIPES["strong"]["lr"]["adam"]


def test_strong_warmup_scales_with_the_run():
    """2 of 40 epochs; a 2-epoch run must not spend the whole run warming up (lr would never decay)."""
    assert TrialConfig.from_flat({"recipe": "strong"}).warmup_epochs == 2.0
    assert TrialConfig.from_flat({"recipe": "strong", "epochs": 3}).warmup_epochs == 0.15
    assert TrialConfig.from_flat({"recipe": "strong", "epochs": 2, "warmup_epochs": 1}).warmup_epochs == 1
    assert TrialConfig.from_flat({"recipe": "seed", "epochs": 3}).warmup_epochs == 0.0  # the study's: none
    c = TrialConfig.from_flat({"recipe": "strong", "epochs": 2})
    assert TrialConfig.from_flat(c.to_flat()) == c
    from vggbn.train import lr_factor
    spe = 100
    peak = max(range(2 * spe), key=lambda s: lr_factor(c, s, spe))
    assert peak < 0.1 * 2 * spe and lr_factor(c, 2 * spe - 1, spe) < 0.01


def test_augment_auto_follows_the_dataset():
    """crop + flip where it is the dataset's standard (CIFAR); off on Fashion-MNIST, where it cost
    accuracy for at least 10 epochs, and on synthetic patterns; explicit values always win."""
    on = {d: TrialConfig.from_flat({"dataset": d}).augment for d in DATASETS}
    assert on == {"cifar10": True, "cifar100": True, "fashion_mnist": False, "synthetic": False}
    assert TrialConfig.from_flat({"dataset": "fashion_mnist", "augment": True}).augment is True
    assert TrialConfig.from_flat({"dataset": "cifar10", "augment": False}).augment is False
    assert TrialConfig.from_flat({"recipe": "seed", "augment": "auto"}).augment is True  # cifar10
    assert TrialConfig.from_flat({"recipe": "seed", "dataset": "fashion_mnist"}).augment is False
    # the stored config holds the resolved value, so it reloads the same on any dataset override
    c = TrialConfig.from_flat({"dataset": "fashion_mnist"})
    assert c.to_flat()["augment"] is False and TrialConfig.from_flat(c.to_flat()) == c
    with pytest.raises(ConfigError, match="augment"):
        TrialConfig.from_flat({"augment": "sometimes"})


def test_flat_round_trip_and_variant():
    c = TrialConfig.from_flat({"preset": "vgg_a_bn", "seed": 3, "width": 0.5, "lr": "2e-3"})
    assert c.lr == 2e-3
    assert TrialConfig.from_flat(c.to_flat()) == c
    v = c.variant()
    assert "seed" not in v and v["bn"] is True
    assert TrialConfig.from_flat({**c.to_flat(), "seed": 4}).variant() == v


def test_every_field_is_documented():
    for name, f in TrialConfig.model_fields.items():
        assert f.description, name


def test_presets_carry_section_and_label():
    for name, p in PRESETS.items():
        assert p["section"] in ("Loss function", "Network structure", "Optimizer"), name
        assert p["label"]


def test_data_dir_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrialConfig.from_flat({"data_dir": "data"}).data_dir == str(tmp_path / "data")
