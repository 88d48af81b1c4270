"""From a sweep file to what will run: load it with --set, read earlier experiments (base_from,
warm start), extend, the dry run and its cost, the Optuna space. No Ray."""
