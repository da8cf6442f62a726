"""Vision-language model backends behind one interface (see ``base.VLMBackend``)."""
