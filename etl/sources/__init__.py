"""Sources: the inputs etl reads (one module per kind, registered in registry.py) and the job plan."""

from etl.sources.base import Plan, Reader, Source, Split, Unreadable, byte_order
from etl.sources.folder import FileReader, FolderSource, scan_tree
from etl.sources.plan import plan
from etl.sources.registry import SOURCES, open_source

__all__ = ["SOURCES", "FileReader", "FolderSource", "Plan", "Reader", "Source", "Split", "Unreadable", "byte_order",
           "open_source", "plan", "scan_tree"]
