import logging

logger = logging.getLogger("tomochunk")
logger.addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("tomochunk") else f"tomochunk.{name}")
