"""ahamask-lightning: learn binary attention-head masks that make a frozen audio LLM do a task
without any text instruction (AHAMask, AAAI 2026), on PyTorch Lightning."""

__version__ = "0.1.0"
