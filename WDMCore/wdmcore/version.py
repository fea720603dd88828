"""The version of wdmcore, on the lowest floor so that every room (the sidecars, the worker, ``wdm --version``)
can read it without importing the package's face (:mod:`wdmcore`), which sits above them all."""

__version__ = "0.1.0"
