"""Ray Tune callbacks: progress lines, TensorBoard, MLflow and W&B."""
