"""The Suanli host agent: a standalone package (pynvml + the standard library). It never imports Django."""
