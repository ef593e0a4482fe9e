"""The live path: Bluesky documents to frames to the engine to estimates, off the RunEngine's
thread.

``callback`` parses documents on the RunEngine's thread into lightweight records; ``frames``
resolves frame references (inline arrays, Resource/Datum files, StreamResource HDF5 rows);
``pairing`` pairs frames with positions and validates them; ``spill`` holds waiting frames
within a memory budget; ``background`` runs a slow callback (TiledWriter) on its own thread;
``pipeline`` owns the worker thread that feeds the engine, and ``delivery`` the publisher
thread that hands results to the store. These modules may import event_model, h5py,
:mod:`ptystream.types` and :mod:`ptystream.config`; never TensorFlow or tiled. Only
``pipeline`` (which drives the engine) and ``delivery`` (which drives the store) reach beyond,
and only through :mod:`ptystream.engine` and :mod:`ptystream.store`.
"""
