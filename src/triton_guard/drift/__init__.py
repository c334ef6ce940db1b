"""Output distribution monitor: windowed statistics against a recorded reference."""
