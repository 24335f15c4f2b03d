"""Compute kernels shared by backbones: the selective scan (``selective_scan``) and its backends."""
from .selective_scan import (BACKENDS, DEFAULT_CHUNK, ScanBackendError, check_backend,
                             get_default_backend, mamba_ssm_available, resolve_backend, scan_macs,
                             scan_build, scan_math, scan_reference, scan_torch,
                             scan_torch_autograd, selective_scan, set_default_backend)

__all__ = ["selective_scan", "scan_torch", "scan_torch_autograd", "scan_reference", "scan_macs", "BACKENDS",
           "DEFAULT_CHUNK", "ScanBackendError", "check_backend", "set_default_backend",
           "get_default_backend", "resolve_backend", "mamba_ssm_available", "scan_math", "scan_build"]
