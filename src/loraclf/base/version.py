"""The package version, in a leaf module: the package's own modules read it from here, so none imports loraclf."""

__version__ = "0.1.0"
