"""The data stage: reasoning traces and behaviour spans, tokenization to token spans, the paper's
annotation markup and on-disk layout, alignment, annotators, prompts, :func:`load_dataset`, the
benchmark task registry and the toy task generators (:mod:`lrm_interp.data.toy_tasks`)."""
