"""The attribution stage: one validated :class:`~lrm_interp.attribution.config.AttributionConfig`,
difference of means (steering vectors), attribution patching, the per-trace pipeline with resume,
results (:class:`Attribution`, :class:`ImportanceShift`), plots and rank statistics, and the check of
attribution patching against real activation patching
(:func:`lrm_interp.attribution.faithfulness.atp_faithfulness`)."""
