"""API routes: prediction, model information and reload, health and metrics."""
