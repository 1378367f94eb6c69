"""sizewise: exact sizes, measured compression."""
__version__ = "0.1.0"
