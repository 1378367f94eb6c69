"""config.json -> ParamInventory: exact tensor inventories of known architectures (pure Python, no torch)."""
from sizewise.arch.families import SUPPORTED_MODEL_TYPES, inventory_from_config, match_tensor, validate_config
from sizewise.arch.inventory import ArchInfo, ParamInventory, TensorSpec
from sizewise.arch.presets import Preset, find_preset, list_presets
from sizewise.arch.resolve import inventory_for, load_config

__all__ = ["SUPPORTED_MODEL_TYPES", "ArchInfo", "ParamInventory", "Preset", "TensorSpec", "find_preset",
           "inventory_for", "inventory_from_config", "list_presets", "load_config", "match_tensor", "validate_config"]
