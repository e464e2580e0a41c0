"""The model stage: loading (with an alias registry), linear sites and weight access, forward
plumbing (input device, base/head split, logits at positions, span losses), provenance and
weight fingerprints, capture hooks, patching and interop with TransformerLens / nnsight."""
