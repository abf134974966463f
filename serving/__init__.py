"""The mlops-lab model server (see serving/README.md)."""
