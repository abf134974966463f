"""FastAPI app serving the MLflow registry's champion with hot swap, micro-batching and metrics."""
