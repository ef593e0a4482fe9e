"""Everything that talks to Tiled: the layout of results, publishing, the spool of results
Tiled could not take, finished runs read back, reprocessed versions, access with an API key,
and the embedded server.

Named ``store`` so that it is never confused with the ``tiled`` package it uses. May import
tiled's client (lazily where it is heavy), :mod:`ptystream.io`, :mod:`ptystream.types` and
:mod:`ptystream.config`; never TensorFlow, bluesky or :mod:`ptystream.live`. The server
itself (``tiled.server``) is imported only by :mod:`ptystream.store.server`, when started.
"""
