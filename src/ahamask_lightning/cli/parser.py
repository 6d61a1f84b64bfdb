"""The LightningCLI parser of ``ahamask fit/validate/test/predict``: configuration errors in one
line naming the key, and the Trainer methods' options described as this CLI treats them."""
from __future__ import annotations

import inspect
import re
import sys
from typing import Any, NoReturn, Optional

from lightning.pytorch.cli import LightningArgumentParser


class OneLineErrorParser(LightningArgumentParser):
    """Config errors as one line naming the key, instead of the usage text and a traceback."""

    def error(self, message: str, *args: Any, **kwargs: Any) -> NoReturn:
        text = " ".join(str(message).split())
        unknown = re.fullmatch(r"Option '([^']+)' is not accepted", text)
        if unknown:  # jsonargparse names only the last part of the key: name the whole flag given
            given = [a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("--")]
            flags = [a for a in given if a.endswith(f".{unknown[1]}")]
            text = f"{flags[0]}: {text}" if flags else text
        print(f"ahamask: config error: {text}", file=sys.stderr)
        sys.exit(2)

    def add_method_arguments(self, class_type: type, method_name: str, *args: Any,
                             skip: set[str | int] | None = None, **kwargs: Any) -> list[str]:
        """The Trainer method's arguments, with ``--weights_only`` described as this CLI treats it
        (Lightning's own help advises ``False``, which is refused here)."""
        takes_it = "weights_only" in inspect.signature(getattr(class_type, method_name)).parameters
        added = super().add_method_arguments(class_type, method_name, *args,
                                             skip={*(skip or ()), "weights_only"}, **kwargs)
        if not takes_it:
            return added
        self.add_argument("--weights_only", type=Optional[bool], default=None,
                          help="checkpoints are always read with weights_only=True (tensors and plain values "
                               "only); false is refused")
        return [*added, "weights_only"]  # still passed on to the Trainer method (as True)
