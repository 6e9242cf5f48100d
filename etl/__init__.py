"""etl: turn image folders into DIGITS/Caffe-compatible LMDB datasets on every core."""

__version__ = "0.3.0"
