"""From a sweep file to what will run: load it with --set (load.py), read earlier experiments
(earlier.py: base_from, warm start, a trial to re-run), extend (extend.py), the dry run and its
cost (dry_run.py), the Optuna space (optuna_space.py). No Ray."""

__all__ = ["load_spec"]

from vggbn.plan.load import load_spec  # noqa: E402
