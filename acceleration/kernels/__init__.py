"""Fused and compiled forms of the layers' operations (the plain forms are layers/layer_ops.py)."""
