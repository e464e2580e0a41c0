"""Annotators for real reasoning traces: text of a thinking part → the paper's markup.

========================  ======================================================================
module                    job
========================  ======================================================================
``base``                  the :class:`~lrm_interp.data.annotators.base.Annotator` protocol,
                          ``thinking_part``, ``annotate_response`` (markup → parser → aligner)
``segment``               sentence / paragraph segmentation that survives LaTeX, lists, code,
                          equations and collapsed line breaks
``r1``                    the offline rule annotator for R1-style text (documented rule table)
``trained``               a logistic-regression annotator fitted on any annotated set, with
                          cross-validated agreement (numpy only, saved as JSON)
``llm``                   Venhoff et al.'s prompt, an OpenAI-compatible client (retries,
                          backoff, token counts), chunking of long traces
``driver``                reading model outputs (paper layout or JSONL) and annotating a whole
                          set with concurrency, a per-trace cache and a report
``agreement``             per-label character- and span-level agreement
========================  ======================================================================

:mod:`lrm_interp.data.annotate` re-exports the public names; this package imports nothing
from it.
"""
