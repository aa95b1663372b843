"""ssmgen: compiler-style codegen and autotuning for the selective scan of Mamba SSMs."""
from .spec import MAX_D_STATE, ScanSpec
from . import reference
from .ops import selective_scan

__version__ = "0.1.0"
__all__ = ["ScanSpec", "MAX_D_STATE", "reference", "selective_scan", "__version__"]
