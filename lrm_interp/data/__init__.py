"""The data stage: reasoning traces and behaviour spans, tokenization to token spans, the paper's
annotation markup and on-disk layout, alignment, annotators, prompts and :func:`load_dataset`."""
