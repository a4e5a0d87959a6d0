"""peapod-scale: a distributed trainer for PeaPOD generative recommendation."""

__version__ = "0.1.0"
