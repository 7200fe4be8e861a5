"""serving-proxy: legacy MLflow 1.x Model Serving in front, MLflow 2 serving endpoints behind."""

__version__ = "0.1.0"
