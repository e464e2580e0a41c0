"""The evaluation stage: batched generation and divergence between models on annotated traces."""
