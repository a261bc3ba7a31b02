"""Bytes in and out: the one image decoder, the one atomic file writer, numpy-aware JSON.

Everything the library reads from or writes to disk outside a bundle's own formats goes through
here, so every file gets the same decoding, the same atomicity and the same file mode.
"""
