"""Pure protocol translation: legacy MLflow 1.x requests in, MLflow 2.x / 3.x bodies out."""
