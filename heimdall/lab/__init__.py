"""Simulated hosts in network namespaces, for the integration tests and the demo."""
from heimdall.lab.hosts import CommandFailed, Host, Lab, LabError

__all__ = ["CommandFailed", "Host", "Lab", "LabError"]
