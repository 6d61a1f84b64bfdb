"""Cost benchmarks of ahamask-lightning: ``python -m bench`` (see ``bench/__main__.py``)."""
