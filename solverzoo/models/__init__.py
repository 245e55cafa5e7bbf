"""The embedded models: networks, worlds, conditioners, shipped weights, training and the
diffusers adapters. Nothing in the library (``solverzoo``) imports this package; the built-in
backbone plugins and the bench do."""
