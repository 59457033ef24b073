"""T5 encoder-decoders (T5 v1.0, T5 v1.1, Flan-T5): config, modeling and generation."""
