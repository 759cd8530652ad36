"""Compositions of task modules (blocks) and their dict form; see compose/blocks.py."""

from .blocks import MERGE_HOWS, Block, Continue, Fuse, Language, Merge, Single, Stack, as_block, kinds

__all__ = ["Block", "Single", "Stack", "Fuse", "Merge", "Continue", "Language", "as_block", "kinds", "MERGE_HOWS"]
