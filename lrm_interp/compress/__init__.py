"""The compression stage: calibration data and Hessian collection, mask-aware quantizers
(``quant/``: RTN, GPTQ, the model-level driver, the quantized file format) and pruning (``prune/``)."""
