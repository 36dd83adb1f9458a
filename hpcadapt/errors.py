"""Errors a user can act on. The entry point prints their message as one paragraph and
exits non-zero without a traceback; anything else is a bug and keeps its traceback."""


class HpcadaptError(Exception):
    """Base class: the message names the file, key or tensor and what was expected."""


class DataError(HpcadaptError):
    """A dataset file is missing, empty, or has rows without the fields a stage needs."""


class ModelError(HpcadaptError):
    """A model folder is missing, incomplete, or its tokenizer cannot serve the stage."""


class StageFailed(HpcadaptError):
    """A stage's processes exited with an error; the message carries the log tail."""
