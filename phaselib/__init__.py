"""phaselib: phase transitions in neural-network training, measured and detected honestly."""
__version__ = "0.1.0"
