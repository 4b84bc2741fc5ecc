"""Inference side: backends, anomaly maps and memory banks.  Never imports torch at module level."""
