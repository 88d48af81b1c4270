"""analysis.results.load on the smoke sweep's export: typed frames whatever wrote them (an older
export, several sweeps, an S3 bucket), the stored spec and provenance, the joins, the loader's
errors; and the README's Python, DuckDB and Polars blocks, run exactly as written."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from analysis.results import FRAMES, ResultsError, load
from conftest import REPO, vggbn_main
from test_bad_input import assert_user_error
from test_s3_cluster import upload  # the moto S3 server fixture `s3`: conftest
from vggbn.schema import STATUSES

EXPORT = ("trials.parquet", "epochs.parquet", "steps.parquet", "probes.parquet", "spec.yaml")


def export_copy(src: Path, dst: Path, name: str | None = None, edit=None) -> Path:
    """The export of `src` (parquet files and spec.yaml) in `dst`, renamed to sweep `name` (its
    trials' sweep column, the parquet metadata, spec.yaml) and each parquet table passed through
    edit(file, table) when given."""
    dst.mkdir(parents=True)
    for f in EXPORT:
        if not (src / f).is_file():
            continue
        if f == "spec.yaml":
            spec = yaml.safe_load((src / f).read_text())
            (dst / f).write_text(yaml.safe_dump({**spec, "name": name or spec["name"]}))
            continue
        t = pq.read_table(src / f)
        meta = json.loads(t.schema.metadata[b"vggbn"])
        if name:
            meta["spec"]["name"] = name
            if "sweep" in t.column_names:
                t = t.set_column(t.column_names.index("sweep"), "sweep", pa.array([name] * len(t)))
        t = t.replace_schema_metadata({**t.schema.metadata, b"vggbn": json.dumps(meta).encode()})
        pq.write_table(edit(f, t) if edit else t, dst / f)
    return dst


def test_columns_are_typed_and_an_older_export_concatenates_cleanly(smoke_run, tmp_path):
    smoke = smoke_run[0]
    r = load(smoke)
    t = r.trials
    assert t["status"].dtype == pd.CategoricalDtype(list(STATUSES), ordered=True)
    for df, ints in ((t, ["seed", "epochs_run", "best_epoch", "params", "batch_size", "epochs"]),
                     (r.epochs, ["epoch"]), (r.steps, ["step", "epoch"]), (r.probes, ["step", "epoch"])):
        assert {c: str(df[c].dtype) for c in ints} == {c: "int64" for c in ints}
    for c in ("test_acc", "val_acc", "best_val_acc", "width", "lr", "gflops"):  # val_*: no split, NaN
        assert t[c].dtype == "float64", c
    assert t["val_acc"].isna().all() and r.epochs["val_acc"].dtype == "float64"
    assert t["bn"].dtype == bool and t["diverged"].dtype == bool and r.epochs["diverged"].dtype == bool
    assert all(t[c].dtype == "str" for c in ("trial_id", "sweep", "label", "variant", "error", "prov_git_commit"))
    assert [c for c in t if pd.api.types.is_object_dtype(t[c])] == ["probe_etas"]  # a tuple per row
    assert set(t["probe_etas"]) == {(0.5, 1.0, 2.0, 4.0)}
    assert not [c for n in FRAMES[1:4] for c, d in getattr(r, n).dtypes.items() if pd.api.types.is_object_dtype(d)]

    def older(f: str, table: pa.Table) -> pa.Table:  # no validation columns yet, epochs as floats
        gone = [c for c in ("val_loss", "val_acc", "best_val_acc", "time_total_s", "bn_position")
                if c in table.column_names]
        table = table.drop_columns(gone)
        if f == "epochs.parquet":
            i = table.column_names.index("epoch")
            table = table.set_column(i, "epoch", table["epoch"].cast(pa.float64()))
        return table

    old = export_copy(smoke, tmp_path / "old", edit=older)
    assert pd.read_parquet(old / "epochs.parquet")["epoch"].dtype == "float64"
    both = load(old, smoke)  # two exports of one sweep: ids stay unique
    assert len(both.trials) == 8 and both.trials["trial_id"].is_unique
    assert {i.split("/")[0] for i in both.trials["trial_id"]} == {"smoke", "smoke#2"}
    for n in FRAMES[:4]:
        new, mixed = getattr(r, n), getattr(both, n)
        assert mixed["trial_id"].isin(both.trials["trial_id"]).all() and len(mixed) == 2 * len(new)
        assert {c: str(d) for c, d in mixed.dtypes.items() if c in new} == {c: str(d) for c, d in new.dtypes.items()}, n
    assert both.epochs.loc[both.epochs["trial_id"].str.startswith("smoke/"), "time_total_s"].isna().all()
    assert both.trials.groupby("variant").size().tolist() == [4, 4]  # equal configs, one variant
    assert both.with_config("epochs")["bn_position"].eq("before_activation").all()


def test_several_sweeps_their_specs_and_provenance(smoke_run, tmp_path):
    smoke = smoke_run[0]
    other = export_copy(smoke, tmp_path / "other", name="other")
    r = load(smoke, other)
    assert r.sweeps == ["smoke", "other"] and r.paths == [str(smoke), str(other)]
    for n in FRAMES[:4]:
        assert set(getattr(r, n)["trial_id"].str.split("/").str[0]) == {"smoke", "other"}, n
    assert r.spec("smoke") == yaml.safe_load((smoke / "spec.yaml").read_text()) == r.specs[0]["spec"]
    assert r.spec("other")["name"] == "other"
    with pytest.raises(ResultsError, match=r"several sweeps loaded \(sweeps: smoke, other\).\nFix: name one"):
        r.spec()
    with pytest.raises(ResultsError, match="no sweep 'nope'"):
        r.spec("nope")
    prov = r.provenance()
    assert list(prov.index) == ["smoke", "other"] and prov["trials"].tolist() == [4, 4]
    assert prov.loc["smoke", "export_git_commit"] == r.specs[0]["driver"]["git_commit"]
    assert prov.loc["smoke", "export_created_utc"] == r.specs[0]["driver"]["created_utc"]
    commits = r.trials.loc[r.trials["sweep"] == "smoke", "prov_git_commit"].unique()
    assert prov.loc["smoke", "trial_git_commits"] == ", ".join(commits) and len(commits) == 1
    v = r.variants()
    assert v["trials"].tolist() == [4, 4] and set(v["sweep"]) == {"smoke, other"}

    (other / "spec.yaml").unlink()  # no spec.yaml: the export's copy
    assert load(other).spec()["name"] == "other"
    (other / "spec.yaml").write_text("name: [unclosed")  # damaged: load() works, spec() says where
    damaged = load(other)
    with pytest.raises(ResultsError, match=rf"{re.escape(str(other / 'spec.yaml'))}: not readable YAML .*\nFix: "):
        damaged.spec()


def test_joins_and_the_variants_frame(smoke_run):
    from analysis.table import comparison_table

    r = load(smoke_run[0])
    e = r.with_config("epochs")
    assert len(e) == len(r.epochs) and list(e.columns[:len(r.epochs.columns)]) == list(r.epochs.columns)
    by_trial = r.trials.set_index("trial_id")
    for key in ("bn", "seed", "label", "variant", "status"):
        assert (e[key] == e["trial_id"].map(by_trial[key])).all(), key
    assert (e["lr_config"] == e["trial_id"].map(by_trial["lr"])).all() and e["lr"].notna().all()
    assert e["bn"].dtype == bool and e["seed"].dtype == "int64"
    p = r.with_config("probes", keys=["bn"])
    assert list(p.columns) == [*r.probes.columns, "sweep", "variant", "label", "section", "status", "bn"]
    assert len(p) == len(r.probes)
    for bad, says in ((lambda: r.with_config("surfaces"), "no surfaces.parquet .*\nFix: run `vggbn landscape"),
                      (lambda: r.with_config("trials"), "no such frame"),
                      (lambda: r.with_config("epochs", keys=["nope"]), "no trial column 'nope'"),
                      (lambda: r.variants(keys=["seed"]), "'seed' is not part of a variant"),
                      (lambda: r.variants("nope"), "no such column")):
        with pytest.raises(ResultsError, match=says):
            bad()

    v = r.variants()
    assert v.index.is_unique and list(v.columns[:4]) == ["label", "section", "sweep", "bn"]
    assert v["trials"].sum() == len(r.trials) and (v["n_completed"] == v["trials"]).all()
    tab, _ = comparison_table(r.trials, r.epochs)
    tab = tab.set_index("variant_id").loc[v.index]
    assert (v["n"] == tab["n"]).all() and list(v["label"]) == list(tab["variant"])
    for c in ("mean", "std", "ci_low", "ci_high"):
        np.testing.assert_allclose(v[c], tab[c], err_msg=c)
    assert set(r.variants(keys=["width"]).columns) >= {"width", "mean"} and "bn" not in r.variants(keys=["width"])

    top = r.top_trials(3)  # no validation split: by test_acc, best first
    assert len(top) == 3 and top["test_acc"].is_monotonic_decreasing
    assert top["test_acc"].iloc[-1] >= r.trials["test_acc"].nlargest(3).iloc[-1]
    assert r.top_trials(2, "test_loss")["test_loss"].tolist() == sorted(r.trials["test_loss"])[:2]


def test_a_column_that_does_not_fit_its_type_is_refused_with_the_fix(smoke_run, tmp_path):
    def bad_epoch(f: str, table: pa.Table) -> pa.Table:
        if f != "epochs.parquet":
            return table
        return table.set_column(table.column_names.index("epoch"), "epoch",
                                pa.array(["first"] * len(table)))

    d = export_copy(smoke_run[0], tmp_path / "smoke", edit=bad_epoch)
    with pytest.raises(ResultsError, match=rf"{re.escape(str(d / 'epochs.parquet'))}: column epoch: .*"
                                           r"a number was expected\)\.\nFix: `vggbn export"):
        load(d)
    assert_user_error(vggbn_main("report", d), "column epoch")  # exit 2, one message, no traceback
    with pytest.raises(ResultsError, match=r"no sweep directory given.\nFix: load\('results/NAME'\)"):
        load()


def test_a_bucket_gives_the_same_frames(smoke_run, s3):  # noqa: F811
    smoke = smoke_run[0]
    upload(s3, smoke, "sweeps/smoke", only=EXPORT)
    uri = f"s3://{s3.bucket}/sweeps/smoke?{s3.query}"
    remote, local = load(uri), load(smoke)
    for n in FRAMES:
        if getattr(local, n) is None:
            assert getattr(remote, n) is None, n
        else:
            pd.testing.assert_frame_equal(getattr(remote, n), getattr(local, n), obj=n)
    assert remote.spec() == local.spec() and remote.provenance()["path"].iloc[0] == uri


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Analysis and `vggbn report`", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_blocks_run_as_written(smoke_run, tmp_path, monkeypatch):
    """The Python, DuckDB and Polars blocks of the README's analysis section, run in order in one
    namespace with results/quick = the smoke sweep and results/other = a second sweep; their
    answers checked against the loader's."""
    blocks = readme_blocks()
    assert len(blocks) == 4 and "duckdb" in blocks[2] and "polars" in blocks[3]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "quick").symlink_to(smoke_run[0])
    export_copy(smoke_run[0], tmp_path / "results" / "other", name="other")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, b in enumerate(blocks):
        exec(compile(b, f"README.md, analysis block {i + 1}", "exec"), ns)

    r = ns["r"]
    assert len(r.trials) == 4 and ns["both"].sweeps == ["smoke", "other"]
    assert list(ns["no_bn"]["bn"]) == [False] and "width" in ns["no_bn"]
    assert sorted(ns["curves"].columns) == sorted(ns["top"]["trial_id"]) and len(ns["curves"]) == 3
    assert ns["spec"]["name"] == "smoke" and len(ns["shown"]) == 2
    assert "only one factor varies (bn)" in ns["effects"].reason
    v = r.variants(keys=["bn"]).set_index("bn").sort_index()
    by_bn = ns["by_bn"].set_index("bn").sort_index()
    assert list(by_bn.index) == list(v.index) == [False, True] and list(by_bn["seeds"]) == list(v["n"])
    np.testing.assert_allclose(by_bn["mean_test_acc"], v["mean"])
    joined = r.with_config("epochs", keys=["bn", "seed"])
    cols = ["trial_id", "bn", "seed", "epoch", "test_acc"]
    pd.testing.assert_frame_equal(ns["joined"][cols].astype({"trial_id": "str"}).reset_index(drop=True),
                                  joined.sort_values(["trial_id", "epoch"])[cols].reset_index(drop=True),
                                  check_dtype=False)
    best = ns["best"].to_pandas().set_index("bn")["best_test_acc"].sort_index()
    pd.testing.assert_series_equal(best, joined.groupby("bn")["test_acc"].max().rename("best_test_acc"),
                                   check_dtype=False)
