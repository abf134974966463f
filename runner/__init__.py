"""mlops-lab runner: sequences the platform's playbooks, one stage at a time, with ansible-runner."""

__version__ = "0.1.0"
