"""The ``ptystream`` command: argparse wiring (``cli``) and the bodies of the commands that are
more than a call into the package (``demo``, ``serve``, ``watch``, ``profiles``).

May import anything in the package; nothing in the package imports it.
"""
