"""analysis/explore.ipynb: committed without outputs, and run on the smoke sweep's results with
nbclient on an ipykernel kernel that runs this venv's Python (the results path injected into its
`parameters` cell in memory), so the notebook cannot rot."""
import json
import sys

import pytest

from conftest import REPO

NOTEBOOK = REPO / "analysis" / "explore.ipynb"
nbformat = pytest.importorskip("nbformat")


def code_cells(nb) -> dict:
    return {c.id: c for c in nb.cells if c.cell_type == "code"}


def test_the_committed_notebook_has_no_outputs_and_one_parameter():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = code_cells(nb)
    dirty = [i for i, c in cells.items() if c.outputs or c.execution_count is not None]
    assert not dirty, f"clear the outputs of {dirty} before committing (Edit -> Clear Outputs of All Cells)"
    params = [c for c in cells.values() if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source == 'RESULTS = "results/quick"'
    assert nb.metadata["kernelspec"]["name"] == "python3"


def _text(cell) -> str:
    """Everything a cell printed or displayed, as text."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts += [o.data.get("text/plain", ""), o.data.get("text/html", "")]
    return "\n".join(parts)


def _pngs(cell) -> list[int]:
    return [len(o.data["image/png"]) for o in cell.outputs if "data" in o and "image/png" in o.data]


def with_surfaces(d) -> None:
    """A surfaces.parquet in the export's format for the sweep in `d`: a bowl per trial, steeper
    without BN (1D: 5 points; 2D: a 5 x 5 grid)."""
    import numpy as np
    import pandas as pd

    trials = pd.read_parquet(d / "trials.parquet")
    a = np.linspace(-1, 1, 5)
    rows = [{"trial_id": tid, "kind": kind, "alpha": x, "beta": y, "loss": 0.1 + (1 if bn else 5) * (x * x + y * y),
             "acc": 1 - 0.1 * (x * x + y * y), "epoch": 3}
            for tid, bn in zip(trials["trial_id"], trials["bn"])
            for kind, grid in (("1d", [(x, 0.0) for x in a]), ("2d", [(x, y) for y in a for x in a]))
            for x, y in grid]
    pd.DataFrame(rows).to_parquet(d / "surfaces.parquet", index=False)


def test_the_notebook_runs_on_the_smoke_sweep(smoke_run, tmp_path, monkeypatch):
    """RESULTS = the smoke sweep and a second sweep (a renamed copy of its export, with loss
    surfaces): every section runs, its branches for several sweeps, probes and surfaces too."""
    from nbclient import NotebookClient

    from test_loader import export_copy

    # a kernel spec of our own, first on JUPYTER_PATH: this venv's Python, whatever the user's
    # own kernels are
    spec = tmp_path / "jupyter" / "kernels" / "vggbn-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vggbn test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    smoke, other = smoke_run[0], export_copy(smoke_run[0], tmp_path / "other", name="other")
    with_surfaces(other)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = code_cells(nb)
    cells["parameters"].source = f"RESULTS = {[str(smoke), str(other)]!r}"
    probe = nbformat.v4.new_code_cell("import sys; print(sys.prefix); print(sys.executable)", id="probe")
    nb.cells.append(probe)
    NotebookClient(nb, timeout=300, kernel_name="vggbn-test",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a cell's error

    prefix, executable = _text(probe).split()
    assert (prefix, executable) == (sys.prefix, sys.executable)
    for i, c in cells.items():
        assert not [o for o in c.outputs if o.output_type == "error"], i
        err = "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stderr")
        assert "Warning" not in err and "Traceback" not in err, (i, err)
    loaded = _text(cells["load"])
    assert "8 trials (8 completed); 2 variants" in loaded and "swept: bn" in loaded
    assert str(smoke) in loaded and str(other) in loaded  # the provenance: where each was read from
    table = _text(cells["table"])
    assert "bn=False (baseline)" in table and "bn=True" in table
    query = _text(cells["query"])  # bn is swept, width is not: said so, and the BN-free variant shown
    assert "width is not swept here" in query and "bn=False" in query and "bn=True" not in query
    assert len(_pngs(cells["curves"])) == 1 and _pngs(cells["curves"])[0] > 5_000
    stats = _text(cells["stats"])
    assert "p_holm" in stats and all(f"{s}: no factorial model: only one factor varies (bn)" in stats
                                     for s in ("smoke", "other"))
    assert "direction" in _text(cells["santurkar"]) and len(_pngs(cells["santurkar"])) == 1
    assert len(_pngs(cells["li"])) == 2 and "No surfaces" not in _text(cells["li"])  # 1D and 2D
