"""The exception hierarchy of wdmcore.

Every message says what was wrong *and* what to do about it; the CLI prints them as they are.
"""


class WDMError(Exception):
    """Base class of every error wdmcore raises on purpose."""


class InputShapeError(WDMError, ValueError):
    """A tensor or volume has a shape the operation cannot handle."""


class CheckpointError(WDMError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the network."""


class ConfigError(WDMError, ValueError):
    """A configuration value (preset, model argument, sampler setting) is invalid."""


class DownloadError(WDMError):
    """A model could not be downloaded, or a downloaded or cached file failed its SHA-256 check."""


class DataError(WDMError):
    """Input data (a folder, a list file, a volume file) is missing, unreadable or unusable."""


class DiskFullError(WDMError):
    """A disk (or the user's quota) is full. Never a property of the file being processed: the run stops and
    keeps what it finished, instead of skipping files as bad."""


class OutOfMemoryError(WDMError, MemoryError):
    """The device ran out of memory (for example while generating a batch of volumes)."""


class NonFiniteError(WDMError, ValueError):
    """Weights or a computed volume hold NaN or infinite values; nothing is written from them."""
