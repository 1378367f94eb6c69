"""Sizes from a ParamInventory: bytes per storage format (formats.py), serving memory (memory.py),
training memory (training.py). Pure arithmetic; no torch import.

    from sizewise.size.formats import size_in_format, tensor_bytes, FORMATS
    from sizewise.size.memory import kv_cache_bytes, inference_memory
    from sizewise.size.training import training_memory
"""
