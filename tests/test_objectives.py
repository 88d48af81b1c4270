"""Several objectives: a real multi-objective Optuna sweep whose trials report their GFLOPs and
parameters, and the report's Pareto trials."""
import pandas as pd
import yaml

from conftest import tiny, vggbn, vggbn_main
from vggbn.config import TrialConfig
from vggbn.models import model_cost


def test_multi_objective_optuna_sweep_reports_costs_and_pareto_trials(tmp_path, ray_address):
    spec = {"name": "mo", "metric": ["val_acc", "gflops"], "mode": ["max", "min"],
            "base": {k: v for k, v in tiny(epochs=1, val_fraction=0.1).items() if k != "width"},
            "space": {"width": {"choice": [0.0625, 0.25]}, "lr": {"loguniform": [1e-4, 1e-2]}},
            "search": "optuna", "num_samples": 3, "resources": {"cpu": 1}, "storage": str(tmp_path)}
    (tmp_path / "mo.yaml").write_text(yaml.safe_dump(spec))
    r = vggbn("sweep", tmp_path / "mo.yaml", "--report", "--address", ray_address)
    assert r.returncode == 0, r.stderr[-3000:]
    t = pd.read_parquet(tmp_path / "mo" / "trials.parquet")
    assert len(t) == 3 and (t["status"] == "completed").all()
    for _, row in t.iterrows():  # what the trial reported is what its model costs
        cfg = TrialConfig.from_stored({k: row[k] for k in TrialConfig.model_fields if k in row})
        gflops, params = model_cost(cfg)
        assert row["gflops"] == gflops and row["params"] == params
    md = (tmp_path / "mo" / "report" / "report.md").read_text()
    assert "## Search insight: mo" in md and "Pareto" in md

    bad = dict(spec, scheduler={"type": "asha"})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = vggbn_main("sweep", tmp_path / "bad.yaml")
    assert r.returncode == 2 and "cannot serve 2 objectives" in r.stderr and "Traceback" not in r.stderr
