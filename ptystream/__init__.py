"""ptystream: live ptychography from Bluesky documents into Tiled.

Importing the package pulls in neither TensorFlow, tiled nor bluesky.
"""

__version__ = "0.1.0"
