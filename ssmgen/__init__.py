"""ssmgen: compiler-style codegen and autotuning for the selective scan of Mamba SSMs."""
from .spec import MAX_D_STATE, ScanSpec
from . import reference
from .ops import selective_scan
from .step import selective_state_update
from .ssd import mamba_chunk_scan_combined


def tune(*args, **kwargs):
    """Tunes one problem on the current GPU and saves the record: see ssmgen.autotune.tune.
    (Imported lazily: the tuner pulls in torch._dynamo and Triton.)"""
    from .autotune import tune as _tune

    return _tune(*args, **kwargs)


__version__ = "0.1.0"
__all__ = ["ScanSpec", "MAX_D_STATE", "reference", "selective_scan", "selective_state_update",
           "mamba_chunk_scan_combined", "tune", "__version__"]
