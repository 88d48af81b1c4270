import json

import pytest

from conftest import vggbn, vggbn_main
from test_models import STUDY_PARAMS


def test_presets_prints_the_study_table():
    r = vggbn("presets")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("vgg_")}
    assert set(rows) == set(STUDY_PARAMS)
    for preset, params in STUDY_PARAMS.items():
        assert f"{params:,}" in rows[preset]
    assert "VGG_BatchNorm" in r.stdout
    # each row's structure, read off the built model, and the study's init the seed recipe uses
    assert "conv-ReLU-BN; head Dropout-Linear-ReLU x2" in rows["vgg_a_dropout_bn"]
    assert "bn_position=after_activation" in rows["vgg_a_dropout_bn"]
    assert "conv-BN-ReLU; head Linear-ReLU x2" in rows["vgg_a_bn"]
    assert "res(conv-BN-ReLU-conv-BN)+ReLU; head Dropout-Linear-ReLU x2" in rows["vgg_a_dropout_bn_res"]
    assert "conv-LeakyReLU(0.1)" in rows["vgg_a_leaky_relu"] and "kaiming_fan_out" in rows["vgg_a_leaky_relu"]
    assert "xavier_normal" in rows["vgg_a"] and " default " in rows["vgg_light"]
    js = json.loads(vggbn_main("presets", "--json").stdout)
    assert {p["preset"]: p["params"] for p in js} == STUDY_PARAMS
    assert {p["preset"]: p["section"] for p in js}["vgg_a_bn_sgd"] == "Optimizer"


def test_train_writes_config_metrics_and_provenance(tmp_path):
    out = tmp_path / "run"
    r = vggbn("train", "--preset", "vgg_a_bn", "--set", "dataset=synthetic", "--set", "width=0.0625",
              "--set", "epochs=2", "--set", "batch_size=64", "--set", "synthetic_size=512",
              "--set", "record_steps=true", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "test_acc=" in r.stdout.splitlines()[-1]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "vgg_a_bn" and cfg["bn"] is True and cfg["width"] == 0.0625
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
            "images_per_s", "diverged"} <= set(lines[0])
    result = json.loads((out / "result.json").read_text())
    prov = result["provenance"]
    for key in ("torch_version", "python_version", "git_commit", "device", "hostname"):
        assert key in prov
    assert prov["device"] == "cpu" and result["result"]["test_acc"] == lines[-1]["test_acc"]
    assert len((out / "steps.jsonl").read_text().splitlines()) == 16
    # the first stderr line says which recipe filled the defaults, and that it was the default
    assert r.stderr.splitlines()[0].startswith("vgg_a_bn on synthetic, cpu: recipe strong (default")
    assert cfg["recipe"] == "strong" and cfg["optimizer"] == "sgd" and cfg["augment"] is False


def test_train_says_when_a_preset_is_another_under_the_recipe():
    """Under the default SGD recipe the study's SGD row is vgg_a_bn itself: the user is told."""
    tiny = ["--set", "dataset=synthetic", "--set", "width=0.0625", "--set", "epochs=1",
            "--set", "synthetic_size=256", "--set", "batch_size=64"]
    r = vggbn_main("train", "--preset", "vgg_a_bn_sgd", *tiny)
    assert r.returncode == 0, r.stderr
    assert "preset vgg_a_bn_sgd trains exactly the config of preset vgg_a_bn" in r.stderr
    r = vggbn_main("train", "--preset", "vgg_a_bn_sgd", "--recipe", "seed", *tiny)
    assert r.returncode == 0 and "exactly the config" not in r.stderr, r.stderr
    r = vggbn_main("train", "--preset", "vgg_a_bn", *tiny)  # the earlier row is the one that stands
    assert r.returncode == 0 and "exactly the config" not in r.stderr, r.stderr


@pytest.mark.parametrize("args,words", [
    (["--set", "dropout=1.5"], ["dropout", "1.5", "less than 1"]),
    (["--set", "optimiser=sgd"], ["optimiser", "did you mean 'optimizer'"]),
    (["--preset", "vgg_b_bn"], ["preset", "vgg_a_bn"]),
    (["--set", "epochs"], ["KEY=VALUE"]),
    (["--set", "width=wide"], ["width", "wide"]),
])
def test_bad_input_exits_2_with_a_short_message(args, words):
    run = vggbn if args == ["--set", "dropout=1.5"] else vggbn_main  # one through the real process
    r = run("train", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert 1 <= len(r.stderr.strip().splitlines()) <= 2, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_missing_dataset_offline_exits_2(tmp_path):
    closed = "http://127.0.0.1:9"  # nothing listens: downloads fail at once
    r = vggbn_main("train", "--set", "dataset=cifar10", "--set", f"data_dir={tmp_path / 'd'}",
              env={"http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed,
                   "HTTPS_PROXY": closed})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cifar-10-python.tar.gz" in r.stderr and str(tmp_path / "d") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2


def test_debug_shows_the_traceback():
    r = vggbn("--debug", "train", "--set", "dropout=1.5")
    assert r.returncode != 0 and "Traceback" in r.stderr
