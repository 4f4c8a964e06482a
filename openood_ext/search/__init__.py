"""Searching the OE set itself: EOE's evolutionary and random search for single OE images."""

from .evolution import ORACLE_NOTE, Node, Search, SearchSettings

__all__ = ["ORACLE_NOTE", "Node", "Search", "SearchSettings"]
