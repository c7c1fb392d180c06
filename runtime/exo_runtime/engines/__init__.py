"""Engine implementations; each module exposes `load(model_path, options, progress)`."""
