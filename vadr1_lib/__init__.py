"""vadr1_lib: the small library behind the Vad-R1 teaching notebooks."""

import logging
import warnings

__version__ = "0.1.0"


class _DropMessages(logging.Filter):
    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


# Messages from the libraries underneath that a reader cannot act on, each silenced by its
# exact text (nothing else from these loggers is hidden):
# - TRL 1.16 reads transformers' deprecated ``is_gradient_checkpointing`` when it generates;
# - bitsandbytes offers a faster CPU 4-bit kernel from the Hub's ``kernels`` package and
#   falls back to its own, equal result, when that cannot be fetched (as on machines
#   without the Hub);
# - DeepSpeed, when installed, says at import that it found no GPU (it runs on the CPU);
# - transformers orders checkpoints by number, not file time, when they were written within
#   a second of each other (tiny models save that fast); the order is the same.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMessages("Failed to load CPU gemm_4bit_forward"))
logging.getLogger("DeepSpeed").addFilter(_DropMessages("Setting accelerator to CPU"))
logging.getLogger("transformers.trainer_utils").addFilter(_DropMessages("mtime may not be reliable"))
