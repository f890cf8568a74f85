"""Whole networks: layer specs, model adapters, building each layer's program, the two schemes."""
