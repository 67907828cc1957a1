"""Entry points for `ray job submit` (thin: load config, build a TorchTrainer, call the library)."""
