"""The runners around the engine: the fit phase, windows, the local and the Ray pipeline, progress."""
