"""Synthetic input generators: ``python -m orderflow_dev.generate orders|keepalive ...``."""
