"""The inverted file: the engine (train, add, search, remove, merge), its
lists, the coarse quantizer (k-means, probe selection, its lower bound),
transforms and parameter tuning."""
