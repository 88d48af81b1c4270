"""Where an experiment lives and what is in it: the experiment directory (local or a bucket), its
claim, atomic writes, checkpoints, the export reader and a trial's stored config. No Ray."""
