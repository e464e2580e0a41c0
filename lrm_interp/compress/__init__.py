"""The compression stage: calibration data and Hessian collection (``calibration.py``), mask-aware
quantizers (``quant/``: RTN, GPTQ, the quantized file format) and pruners (``prune/``: magnitude,
SparseGPT, Wanda), all run by one driver with a method registry (``driver.py``); the pieces the
kernels share (``common.py``: damped inverse Cholesky, the N:M check) and compression spec
strings such as ``gptq:3`` or ``wanda:2:4`` (``specs.py``)."""
