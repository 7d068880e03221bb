"""Real-time filters: score samples during inference with a fitted result."""
