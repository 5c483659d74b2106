"""Synthetic input generators: ``python -m orderflow.generate orders|keepalive ...``."""
