"""Built-in plugins: sources, decoders and alert handlers, registered like third-party ones."""
