"""Training-side anomaly-detection methods (torch).

Submodules are imported explicitly (``from edgeuad.methods import recontrast``)
so that importing one method never pulls in the others.
"""
