"""Where entries and their vectors live. Backends never embed text and never decide policy."""
