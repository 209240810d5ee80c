"""The version of corral, kept in one place so that ``import corral`` reads no package metadata."""

__version__ = "0.1.0"
