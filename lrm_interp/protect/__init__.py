"""The protection stage: per-weight saliency sources (a registry), protection masks and their
policies, encodings and bits-per-weight accounting, and exports for deployment toolchains."""
