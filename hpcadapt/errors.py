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


class WriteFailed(HpcadaptError):
    """A file could not be written (disk full, quota, read-only filesystem); says what survived."""


# errno values that mean "this filesystem will not take the write", not a bug.
_WRITE_ERRNOS = {"ENOSPC": "no space left on the device", "EDQUOT": "disk quota exceeded",
                 "EROFS": "read-only filesystem", "EFBIG": "file too large for the filesystem",
                 "EACCES": "permission denied", "EPERM": "operation not permitted",
                 "ENOTDIR": "a path component is a file, not a folder", "EIO": "input/output error"}
# How writers that do not raise OSError report it: torch's zip writer ("unexpected pos 576 vs
# 534"), safetensors ("I/O error: No space left on device (os error 28)").
_MESSAGE_MARKERS = {"No space left on device": "no space left on the device",
                    "Disk quota exceeded": "disk quota exceeded", "Read-only file system": "read-only filesystem",
                    "unexpected pos": "a short write (no space left on the device, most likely)",
                    "file write failed": "a short write (no space left on the device, most likely)"}


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, in words, when `exc` (or an exception it chains from) is the filesystem
    refusing it; None for anything else, which stays a bug with its traceback."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            name = errno.errorcode.get(exc.errno, "")
            if name in _WRITE_ERRNOS:
                return _WRITE_ERRNOS[name]
        found = next((why for marker, why in _MESSAGE_MARKERS.items() if marker in str(exc)), None)
        if found:
            return found
        exc = exc.__cause__ or exc.__context__
    return None
