"""The attribution stage: one validated :class:`~lrm_interp.attribution.config.AttributionConfig`,
difference of means (steering vectors), attribution patching, the per-trace pipeline with resume,
results (:class:`Attribution`, :class:`ImportanceShift`), plots and rank statistics."""
