"""One exception type for every user mistake: the CLI prints its message on one line and exits 2."""


class SizewiseError(Exception):
    """Bad input: what is wrong and what to do, in one line."""
